//! `-m/--map KIND:NSID:HOSTID:COUNT`, the `lxc-usernsexec -m` and `fuidshift` syntax.
//!
//! Strict where lxc-usernsexec is lax (it reads the text with `sscanf`): exactly four fields,
//! decimal digits only (no sign, no spaces, no trailing junk), a count of at least 1, and ranges
//! that stay below id `4294967295`.

use std::fmt;
use std::str::FromStr;

use super::{IdKind, IdMapEntry, IdRange, MapError};

/// Which kinds of ids a spec maps: `u`, `g` or `b` (both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecKind {
    Uid,
    Gid,
    Both,
}

impl SpecKind {
    pub fn kinds(self) -> &'static [IdKind] {
        match self {
            SpecKind::Uid => &[IdKind::Uid],
            SpecKind::Gid => &[IdKind::Gid],
            SpecKind::Both => &IdKind::BOTH,
        }
    }

    fn letter(self) -> char {
        match self {
            SpecKind::Uid => 'u',
            SpecKind::Gid => 'g',
            SpecKind::Both => 'b',
        }
    }
}

/// One `KIND:NSID:HOSTID:COUNT` spec, validated: built only by [`MapSpec::new`] (or parsed),
/// so both sides are valid ranges of the same length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    kind: SpecKind,
    ns: IdRange,
    host: IdRange,
}

impl MapSpec {
    /// Builds a spec, checking the count and both ranges.
    pub fn new(
        kind: SpecKind,
        ns_start: u32,
        host_start: u32,
        count: u32,
    ) -> Result<Self, MapError> {
        // IdMapEntry checks the count and that both ranges end below -1.
        let e = IdMapEntry::new(IdKind::Uid, ns_start, host_start, count).map_err(|e| {
            MapError::new(
                format!("{}:{ns_start}:{host_start}:{count}", kind.letter()),
                e.reason,
            )
        })?;
        Ok(MapSpec {
            kind,
            ns: e.ns_range(),
            host: e.host_range(),
        })
    }

    pub fn kind(&self) -> SpecKind {
        self.kind
    }

    pub fn ns_start(&self) -> u32 {
        self.ns.start()
    }

    pub fn host_start(&self) -> u32 {
        self.host.start()
    }

    pub fn count(&self) -> u32 {
        self.ns.count()
    }

    /// The map entries this spec stands for: one, or two for `b`.
    pub fn entries(&self) -> impl Iterator<Item = IdMapEntry> + '_ {
        self.kind.kinds().iter().map(move |&kind| IdMapEntry {
            kind,
            ns: self.ns,
            host: self.host,
        })
    }
}

impl fmt::Display for MapSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::fmt_entry(
            f,
            self.kind.letter(),
            self.ns_start(),
            self.host_start(),
            self.count(),
        )
    }
}

/// Parses a decimal id or count: ASCII digits only, at least one, fitting in u32.
pub(crate) fn parse_number(field: &str, what: &str) -> Result<u32, String> {
    if field.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} '{field}' is not a decimal number"));
    }
    field
        .parse::<u32>()
        .map_err(|_| format!("{what} '{field}' is larger than 4294967295"))
}

impl FromStr for MapSpec {
    type Err = MapError;

    fn from_str(text: &str) -> Result<Self, MapError> {
        let bad = |reason: String| MapError::new(text, reason);
        let fields: Vec<&str> = text.split(':').collect();
        if fields.len() != 4 {
            return Err(bad(format!(
                "expected KIND:NSID:HOSTID:COUNT (4 fields separated by ':'), found {}",
                fields.len()
            )));
        }
        let kind = match fields[0] {
            "u" => SpecKind::Uid,
            "g" => SpecKind::Gid,
            "b" => SpecKind::Both,
            other => return Err(bad(format!("KIND '{other}' is not 'u', 'g' or 'b'"))),
        };
        let ns = parse_number(fields[1], "NSID").map_err(bad)?;
        let host = parse_number(fields[2], "HOSTID").map_err(bad)?;
        let count = parse_number(fields[3], "COUNT").map_err(bad)?;
        MapSpec::new(kind, ns, host, count).map_err(|e| bad(e.reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! spec_tests {
        ($($name:ident: $text:expr => $want:expr,)*) => {$(
            #[test]
            fn $name() {
                let got = $text.parse::<MapSpec>().map_err(|e| e.to_string());
                assert_eq!(got, $want, "parsing {:?}", $text);
            }
        )*};
    }

    fn ok(kind: SpecKind, ns: u32, host: u32, count: u32) -> Result<MapSpec, String> {
        Ok(MapSpec::new(kind, ns, host, count).unwrap())
    }

    fn err(msg: &str) -> Result<MapSpec, String> {
        Err(msg.to_string())
    }

    spec_tests! {
        both: "b:0:100000:65536" => ok(SpecKind::Both, 0, 100000, 65536),
        uid: "u:0:1000:1" => ok(SpecKind::Uid, 0, 1000, 1),
        gid: "g:1:190000:1" => ok(SpecKind::Gid, 1, 190000, 1),
        leading_zeros: "u:00:0100000:010" => ok(SpecKind::Uid, 0, 100000, 10),
        largest: "u:0:0:4294967295" => ok(SpecKind::Uid, 0, 0, 4294967295),
        last_valid_id: "u:4294967294:0:1" => ok(SpecKind::Uid, 4294967294, 0, 1),
        trailing_junk: "u:0:100000:65536x"
            => err("invalid map 'u:0:100000:65536x': COUNT '65536x' is not a decimal number"),
        extra_field: "u:0:100000:65536:1"
            => err("invalid map 'u:0:100000:65536:1': expected KIND:NSID:HOSTID:COUNT (4 fields separated by ':'), found 5"),
        too_few: "u:0:100000"
            => err("invalid map 'u:0:100000': expected KIND:NSID:HOSTID:COUNT (4 fields separated by ':'), found 3"),
        empty: "" => err("invalid map '': expected KIND:NSID:HOSTID:COUNT (4 fields separated by ':'), found 1"),
        space: "u:0: 100000:65536"
            => err("invalid map 'u:0: 100000:65536': HOSTID ' 100000' is not a decimal number"),
        trailing_space: "u:0:100000:65536 "
            => err("invalid map 'u:0:100000:65536 ': COUNT '65536 ' is not a decimal number"),
        negative: "u:-1:100000:1" => err("invalid map 'u:-1:100000:1': NSID '-1' is not a decimal number"),
        plus_sign: "u:+1:100000:1" => err("invalid map 'u:+1:100000:1': NSID '+1' is not a decimal number"),
        hex: "u:0x10:100000:1" => err("invalid map 'u:0x10:100000:1': NSID '0x10' is not a decimal number"),
        bad_kind: "x:0:100000:1" => err("invalid map 'x:0:100000:1': KIND 'x' is not 'u', 'g' or 'b'"),
        upper_kind: "U:0:100000:1" => err("invalid map 'U:0:100000:1': KIND 'U' is not 'u', 'g' or 'b'"),
        empty_field: "u::100000:1" => err("invalid map 'u::100000:1': NSID is empty"),
        zero_count: "b:0:100000:0" => err("invalid map 'b:0:100000:0': COUNT must be at least 1"),
        too_big: "u:0:4294967296:1"
            => err("invalid map 'u:0:4294967296:1': HOSTID '4294967296' is larger than 4294967295"),
        host_past_limit: "u:0:4294967295:1"
            => err("invalid map 'u:0:4294967295:1': the host range runs past 4294967294 (the largest valid id)"),
        ns_past_limit: "b:4294967000:100000:65536"
            => err("invalid map 'b:4294967000:100000:65536': the namespace range runs past 4294967294 (the largest valid id)"),
        overflow: "u:0:4000000000:4000000000"
            => err("invalid map 'u:0:4000000000:4000000000': the host range runs past 4294967294 (the largest valid id)"),
    }

    #[test]
    fn both_expands_to_two_entries() {
        let spec: MapSpec = "b:0:100000:65536".parse().unwrap();
        let entries: Vec<_> = spec.entries().collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].to_string(), "u:0:100000:65536");
        assert_eq!(entries[1].to_string(), "g:0:100000:65536");
        assert_eq!(spec.to_string(), "b:0:100000:65536");
    }
}
