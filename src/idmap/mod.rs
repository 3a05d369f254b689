//! The uid/gid mapping model shared by every command.
//!
//! An [`IdMap`] is what `/proc/PID/uid_map` and `gid_map` hold: for each kind of id, a set of
//! extents `(namespace start, host start, count)`. Ranges are half-open, ids are `u32`,
//! `4294967295` (`-1`) is never a valid id, and the extents of one kind overlap on neither side.
//! Lookups go both ways by binary search, so maps of many entries stay fast.
//!
//! Each source of maps has its own small parser: [`spec`] (`-m KIND:NSID:HOSTID:COUNT`),
//! [`subid`] (`/etc/subuid`, `/etc/subgid`), [`lxc`] (LXC container configs), [`oci`]
//! (an OCI runtime `config.json`) and [`proc`] (`/proc/PID/{uid,gid}_map`, a running namespace).

pub mod lxc;
pub mod oci;
pub mod proc;
pub mod source;
pub mod spec;
pub mod subid;

use std::fmt;

pub use spec::{MapSpec, SpecKind};

/// The largest value a valid id range may end at (exclusive): `-1` is never a valid id.
pub const ID_LIMIT: u32 = u32::MAX;

/// The usual size of one container's share of ids (`b:0:100000:65536`, a subuid line): the unit
/// `status` buckets ids in and `migrate --to auto` allocates.
pub const BLOCK: u32 = 65536;

/// The Linux limit on the number of lines in one `uid_map` or `gid_map` (since 4.15).
pub const KERNEL_MAX_EXTENTS: usize = 340;

/// User ids or group ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    Uid,
    Gid,
}

impl IdKind {
    pub const BOTH: [IdKind; 2] = [IdKind::Uid, IdKind::Gid];

    /// The letter used in map specs: `u` or `g`.
    pub fn letter(self) -> char {
        match self {
            IdKind::Uid => 'u',
            IdKind::Gid => 'g',
        }
    }

    /// `uid` or `gid`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            IdKind::Uid => "uid",
            IdKind::Gid => "gid",
        }
    }
}

/// One value for each kind of id, picked by [`IdKind`] (`by_kind[kind]`) instead of a `match`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ByKind<T> {
    pub uid: T,
    pub gid: T,
}

impl<T> ByKind<T> {
    pub fn new(uid: T, gid: T) -> Self {
        ByKind { uid, gid }
    }

    /// The value of each kind from `f`, uid first; the first error stops it.
    pub fn try_from_fn<E>(mut f: impl FnMut(IdKind) -> Result<T, E>) -> Result<Self, E> {
        Ok(ByKind {
            uid: f(IdKind::Uid)?,
            gid: f(IdKind::Gid)?,
        })
    }
}

impl<T> std::ops::Index<IdKind> for ByKind<T> {
    type Output = T;

    fn index(&self, kind: IdKind) -> &T {
        match kind {
            IdKind::Uid => &self.uid,
            IdKind::Gid => &self.gid,
        }
    }
}

/// A half-open run of ids `[start, start + len)`; `len > 0` and the end fits below `-1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdRange {
    start: u32,
    len: u32,
}

impl IdRange {
    /// A range of `len` ids from `start`; `None` if empty or if it would reach id `-1`.
    pub fn new(start: u32, len: u32) -> Option<IdRange> {
        if len == 0 {
            return None;
        }
        // The end is exclusive: a range ending at ID_LIMIT (u32::MAX) stops before id -1.
        start.checked_add(len)?;
        Some(IdRange { start, len })
    }

    pub fn start(self) -> u32 {
        self.start
    }

    pub fn count(self) -> u32 {
        self.len
    }

    /// One past the last id; never more than [`ID_LIMIT`].
    pub fn end(self) -> u32 {
        // Cannot overflow: checked in `new`.
        self.start + self.len
    }

    pub fn contains(self, id: u32) -> bool {
        id >= self.start && id < self.end()
    }

    /// Whether every id of `other` is in this range.
    pub fn covers(self, other: IdRange) -> bool {
        self.start <= other.start && other.end() <= self.end()
    }

    /// The ids both ranges hold, if any.
    pub fn intersect(self, other: IdRange) -> Option<IdRange> {
        let start = self.start.max(other.start);
        let end = self.end().min(other.end());
        (start < end).then(|| IdRange {
            start,
            len: end - start,
        })
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end() - 1)
    }
}

/// One line of a uid or gid map: `count` ids from `ns_start` inside are `host_start..` outside.
///
/// Built only by [`IdMapEntry::new`], so both sides are valid ranges of the same length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdMapEntry {
    kind: IdKind,
    ns: IdRange,
    host: IdRange,
}

impl IdMapEntry {
    /// An entry of `count` ids; refused if `count` is 0 or either side would reach id `-1`.
    pub fn new(kind: IdKind, ns_start: u32, host_start: u32, count: u32) -> Result<Self, MapError> {
        let text = || format!("{}:{ns_start}:{host_start}:{count}", kind.letter());
        if count == 0 {
            return Err(MapError::new(text(), "COUNT must be at least 1"));
        }
        let ns = IdRange::new(ns_start, count).ok_or_else(|| {
            MapError::new(
                text(),
                "the namespace range runs past 4294967294 (the largest valid id)",
            )
        })?;
        let host = IdRange::new(host_start, count).ok_or_else(|| {
            MapError::new(
                text(),
                "the host range runs past 4294967294 (the largest valid id)",
            )
        })?;
        Ok(IdMapEntry { kind, ns, host })
    }

    pub fn kind(&self) -> IdKind {
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

    pub fn ns_range(&self) -> IdRange {
        self.ns
    }

    pub fn host_range(&self) -> IdRange {
        self.host
    }

    /// The same extent read the other way: host ids become namespace ids.
    pub fn inverse(&self) -> IdMapEntry {
        IdMapEntry {
            kind: self.kind,
            ns: self.host,
            host: self.ns,
        }
    }
}

/// Writes `KIND:NSID:HOSTID:COUNT`, the form of map entries and specs.
pub(crate) fn fmt_entry(
    f: &mut fmt::Formatter<'_>,
    kind: char,
    ns: u32,
    host: u32,
    count: u32,
) -> fmt::Result {
    write!(f, "{kind}:{ns}:{host}:{count}")
}

impl fmt::Display for IdMapEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_entry(
            f,
            self.kind().letter(),
            self.ns_start(),
            self.host_start(),
            self.count(),
        )
    }
}

/// A map that is malformed or inconsistent, with the text at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapError {
    /// The offending text, quoted in the message.
    pub text: String,
    pub reason: String,
}

impl MapError {
    pub fn new(text: impl Into<String>, reason: impl Into<String>) -> Self {
        MapError {
            text: text.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid map '{}': {}", self.text, self.reason)
    }
}

impl std::error::Error for MapError {}

/// The extents of one kind, indexed both ways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KindMap {
    /// In the order given (the order written to the kernel and shown to users).
    entries: Vec<IdMapEntry>,
    /// Indices into `entries`, sorted by namespace start.
    by_ns: Vec<u32>,
    /// Indices into `entries`, sorted by host start.
    by_host: Vec<u32>,
}

impl KindMap {
    fn build(entries: Vec<IdMapEntry>) -> Result<KindMap, MapError> {
        let mut by_ns: Vec<u32> = (0..entries.len() as u32).collect();
        let mut by_host = by_ns.clone();
        by_ns.sort_by_key(|&i| entries[i as usize].ns_start());
        by_host.sort_by_key(|&i| entries[i as usize].host_start());
        let map = KindMap {
            entries,
            by_ns,
            by_host,
        };
        map.check_overlap(&map.by_ns, IdMapEntry::ns_range, "namespace")?;
        map.check_overlap(&map.by_host, IdMapEntry::host_range, "host")?;
        Ok(map)
    }

    fn check_overlap(
        &self,
        order: &[u32],
        range: fn(&IdMapEntry) -> IdRange,
        side: &str,
    ) -> Result<(), MapError> {
        for pair in order.windows(2) {
            let (a, b) = (
                &self.entries[pair[0] as usize],
                &self.entries[pair[1] as usize],
            );
            if let Some(both) = range(a).intersect(range(b)) {
                return Err(MapError::new(
                    format!("{a} {b}"),
                    format!("the entries overlap in {side} {}s {both}", a.kind().name()),
                ));
            }
        }
        Ok(())
    }

    /// The entry whose range (chosen by `key`/`range`) holds `id`.
    fn find(&self, order: &[u32], id: u32, key: fn(&IdMapEntry) -> u32) -> Option<&IdMapEntry> {
        // The last entry starting at or before `id`.
        let pos = order.partition_point(|&i| key(&self.entries[i as usize]) <= id);
        let entry = &self.entries[*order.get(pos.checked_sub(1)?)? as usize];
        (id - key(entry) < entry.count()).then_some(entry)
    }
}

/// A uid map and a gid map, each validated (no overlap on either side).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    kinds: ByKind<KindMap>,
}

impl IdMap {
    /// Builds a map from entries of both kinds, keeping their order within each kind.
    pub fn new(entries: impl IntoIterator<Item = IdMapEntry>) -> Result<IdMap, MapError> {
        let (uids, gids): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|e| e.kind() == IdKind::Uid);
        Ok(IdMap {
            kinds: ByKind::new(KindMap::build(uids)?, KindMap::build(gids)?),
        })
    }

    /// Builds a map from specs, expanding `b` entries into a uid and a gid entry.
    pub fn from_specs<'a>(specs: impl IntoIterator<Item = &'a MapSpec>) -> Result<IdMap, MapError> {
        IdMap::new(specs.into_iter().flat_map(MapSpec::entries))
    }

    /// The map that leaves every valid id as it is: the host's own view.
    pub fn identity() -> IdMap {
        IdMap::new(
            IdKind::BOTH
                .map(|kind| IdMapEntry::new(kind, 0, 0, ID_LIMIT).expect("full range is valid")),
        )
        .expect("identity map is valid")
    }

    fn kind(&self, kind: IdKind) -> &KindMap {
        &self.kinds[kind]
    }

    /// The entries of `kind`, in the order they were given.
    pub fn entries(&self, kind: IdKind) -> &[IdMapEntry] {
        &self.kind(kind).entries
    }

    /// Every entry, uids first.
    pub fn all_entries(&self) -> impl Iterator<Item = &IdMapEntry> {
        self.kinds.uid.entries.iter().chain(&self.kinds.gid.entries)
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.uid.entries.is_empty() && self.kinds.gid.entries.is_empty()
    }

    pub fn has(&self, kind: IdKind) -> bool {
        !self.kind(kind).entries.is_empty()
    }

    /// The host id that namespace id `id` stands for.
    pub fn to_host(&self, kind: IdKind, id: u32) -> Option<u32> {
        let map = self.kind(kind);
        map.find(&map.by_ns, id, |e| e.ns_start())
            .map(|e| e.host_start() + (id - e.ns_start()))
    }

    /// The namespace id that host id `id` appears as, if it is mapped.
    pub fn to_ns(&self, kind: IdKind, id: u32) -> Option<u32> {
        let map = self.kind(kind);
        map.find(&map.by_host, id, |e| e.host_start())
            .map(|e| e.ns_start() + (id - e.host_start()))
    }

    /// The kernel's text for `/proc/PID/{uid,gid}_map`: one `NSID HOSTID COUNT` line an entry.
    pub fn proc_text(&self, kind: IdKind) -> String {
        self.entries(kind)
            .iter()
            .map(|e| format!("{} {} {}\n", e.ns_start(), e.host_start(), e.count()))
            .collect()
    }

    /// Checks that the kernel takes each kind's map in one write: at most
    /// [`KERNEL_MAX_EXTENTS`] lines, and [`proc_text`](Self::proc_text) shorter than one page
    /// (`map_write` in kernel/user_namespace.c refuses both with a bare `EINVAL`).
    pub fn check_writable(&self, page_size: usize) -> Result<(), String> {
        for kind in IdKind::BOTH {
            let n = self.entries(kind).len();
            if n > KERNEL_MAX_EXTENTS {
                return Err(format!(
                    "the {} map has {n} entries; the kernel takes at most {KERNEL_MAX_EXTENTS} \
                     (merge adjacent entries into wider ones)",
                    kind.name()
                ));
            }
            let bytes = self.proc_text(kind).len();
            if bytes >= page_size {
                return Err(format!(
                    "the {} map is {bytes} bytes as written to {}_map; the kernel takes less \
                     than one page ({page_size} bytes): merge adjacent entries into wider ones",
                    kind.name(),
                    kind.name()
                ));
            }
        }
        Ok(())
    }

    /// The map read the other way: host ids become namespace ids.
    pub fn inverse(&self) -> IdMap {
        IdMap::new(self.all_entries().map(IdMapEntry::inverse))
            .expect("the inverse of a valid map is valid")
    }

    /// Parses the text `Display` writes: specs separated by spaces.
    pub fn parse_list(text: &str) -> Result<IdMap, MapError> {
        let specs: Vec<MapSpec> = text
            .split_ascii_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        IdMap::from_specs(&specs)
    }

    /// Adds a one-id entry for host id `host` unless the map already maps it: at the same id
    /// inside when that is free, else just above the highest mapped namespace id.
    pub fn with_host_id(&self, kind: IdKind, host: u32) -> Result<IdMap, MapError> {
        if self.to_ns(kind, host).is_some() {
            return Ok(self.clone());
        }
        let top = self.entries(kind).iter().map(|e| e.ns_range().end()).max();
        let ns = if self.to_host(kind, host).is_none() {
            host
        } else {
            top.unwrap_or(0)
        };
        let entry = IdMapEntry::new(kind, ns, host, 1)?;
        IdMap::new(self.all_entries().copied().chain([entry]))
    }

    /// Composes FROM⁻¹ then TO: a map whose "namespace" side is a host id under `self`
    /// and whose "host" side is the host id the same container id has under `to`.
    ///
    /// Also returns, per kind, the container-id ranges of `self` that `to` does not map.
    pub fn compose(&self, to: &IdMap) -> (IdMap, Vec<(IdKind, IdRange)>) {
        let mut out = Vec::new();
        let mut unmapped = Vec::new();
        for kind in IdKind::BOTH {
            for from in self.entries(kind) {
                let want = from.ns_range();
                let mut covered = Vec::new();
                for target in to.entries(kind) {
                    if let Some(both) = want.intersect(target.ns_range()) {
                        let old_host = from.host_start() + (both.start() - from.ns_start());
                        let new_host = target.host_start() + (both.start() - target.ns_start());
                        out.push(
                            IdMapEntry::new(kind, old_host, new_host, both.count())
                                .expect("a sub-range of valid ranges is valid"),
                        );
                        covered.push(both);
                    }
                }
                covered.sort();
                let mut next = want.start();
                let mut gap = |from: u32, to: u32| {
                    if to > from {
                        unmapped.push((kind, IdRange::new(from, to - from).expect("sub-range")));
                    }
                };
                for c in &covered {
                    gap(next, c.start());
                    next = next.max(c.end());
                }
                gap(next, want.end());
            }
        }
        let map = IdMap::new(out).expect("a composition of valid maps is valid");
        (map, unmapped)
    }
}

impl fmt::Display for IdMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for e in self.all_entries() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The most a config file (LXC config, OCI config.json) may hold; a larger one is refused.
pub const MAX_CONFIG: u64 = 4 << 20;

/// Reads a config file as UTF-8 text (an OCI `config.json`), bounded as
/// [`read_config_bytes`] reads it. `Ok(None)` when it does not exist.
pub fn read_config(path: &std::path::Path) -> crate::error::Result<Option<String>> {
    let bad = |why: &str| {
        crate::error::Error::Usage(format!("{}: {why}", crate::report::escape_path(path)))
    };
    match read_config_bytes(path)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| bad("not UTF-8 text")),
    }
}

/// Reads a config file as bytes (LXC reads its configs so: a Latin-1 comment is fine), bounded:
/// it must be a regular file (a FIFO, a device such as `/dev/zero`, or a directory is refused
/// without blocking or reading) of at most [`MAX_CONFIG`] bytes. `Ok(None)` when it does not
/// exist.
pub fn read_config_bytes(path: &std::path::Path) -> crate::error::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |why: &str| {
        crate::error::Error::Usage(format!("{}: {why}", crate::report::escape_path(path)))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::error::Error::io(path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| crate::error::Error::io(path, e))?;
    if !meta.is_file() {
        return Err(bad("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| crate::error::Error::io(path, e))?;
    if bytes.len() as u64 > MAX_CONFIG {
        return Err(bad(&format!("larger than {MAX_CONFIG} bytes")));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_read_bounded_and_only_from_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        for (path, want) in [
            (fifo.as_path(), "not a regular file"),
            (std::path::Path::new("/dev/zero"), "not a regular file"),
            (tmp.path(), "not a regular file"),
        ] {
            let err = read_config(path).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: {err}",
                crate::report::escape_path(path)
            );
        }
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG as usize + 1]).unwrap();
        assert!(read_config(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        assert_eq!(read_config(&tmp.path().join("none")).unwrap(), None);
        std::fs::write(tmp.path().join("ok"), "lxc.arch = x\n").unwrap();
        assert_eq!(
            read_config(&tmp.path().join("ok")).unwrap().as_deref(),
            Some("lxc.arch = x\n")
        );
    }

    fn e(kind: IdKind, ns: u32, host: u32, count: u32) -> IdMapEntry {
        IdMapEntry::new(kind, ns, host, count).unwrap()
    }

    #[test]
    fn entries_and_specs_refuse_an_empty_count_when_built() {
        // The fields are private: the constructor is the only way to an entry, so IdMap::new
        // never meets a count of 0 (which used to panic it).
        for kind in IdKind::BOTH {
            let err = IdMapEntry::new(kind, 0, 100000, 0).unwrap_err();
            assert_eq!(err.reason, "COUNT must be at least 1");
        }
        let err = MapSpec::new(SpecKind::Both, 0, 100000, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid map 'b:0:100000:0': COUNT must be at least 1"
        );
        let entry = e(IdKind::Gid, 0, 100000, 65536);
        assert_eq!(
            (
                entry.kind(),
                entry.ns_start(),
                entry.host_start(),
                entry.count()
            ),
            (IdKind::Gid, 0, 100000, 65536)
        );
        assert_eq!(entry.inverse().host_range(), entry.ns_range());
    }

    #[test]
    fn by_kind_picks_by_kind() {
        let b = ByKind::new("u", "g");
        assert_eq!((b[IdKind::Uid], b[IdKind::Gid]), ("u", "g"));
        let names = ByKind::try_from_fn(|k| Ok::<_, ()>(k.name())).unwrap();
        assert_eq!(names, ByKind::new("uid", "gid"));
        assert_eq!(
            ByKind::try_from_fn(|k| if k == IdKind::Gid { Err(k) } else { Ok(1) }),
            Err(IdKind::Gid)
        );
    }

    #[test]
    fn range_is_half_open_and_checked() {
        let r = IdRange::new(100, 10).unwrap();
        assert!(r.contains(100) && r.contains(109));
        assert!(!r.contains(99) && !r.contains(110));
        assert_eq!(r.end(), 110);
        assert_eq!(IdRange::new(5, 0), None);
        assert_eq!(IdRange::new(u32::MAX - 1, 1).unwrap().end(), u32::MAX);
        assert_eq!(IdRange::new(u32::MAX - 1, 2), None, "would include -1");
        assert_eq!(IdRange::new(u32::MAX, 1), None, "-1 itself");
        assert_eq!(IdRange::new(3_000_000_000, 3_000_000_000), None, "overflow");
        assert_eq!(r.to_string(), "100-109");
        assert!(r.covers(r) && r.covers(IdRange::new(101, 9).unwrap()));
        assert!(
            !r.covers(IdRange::new(99, 2).unwrap()) && !r.covers(IdRange::new(109, 2).unwrap())
        );
    }

    #[test]
    fn intersect() {
        let a = IdRange::new(0, 10).unwrap();
        let b = IdRange::new(5, 10).unwrap();
        assert_eq!(a.intersect(b), IdRange::new(5, 5));
        assert_eq!(a.intersect(IdRange::new(10, 1).unwrap()), None);
    }

    #[test]
    fn entry_validation() {
        assert!(IdMapEntry::new(IdKind::Uid, 0, 100000, 0).is_err());
        assert!(IdMapEntry::new(IdKind::Uid, u32::MAX, 0, 1).is_err());
        assert!(IdMapEntry::new(IdKind::Uid, 0, u32::MAX - 5, 6).is_err());
        assert!(IdMapEntry::new(IdKind::Uid, 0, u32::MAX - 5, 5).is_ok());
        let err = IdMapEntry::new(IdKind::Gid, 0, 1, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid map 'g:0:1:0': COUNT must be at least 1"
        );
    }

    #[test]
    fn lookups_both_ways() {
        let map = IdMap::new([
            e(IdKind::Uid, 0, 100000, 65536),
            e(IdKind::Uid, 65536, 300000, 10),
            e(IdKind::Gid, 0, 200000, 1),
        ])
        .unwrap();
        assert_eq!(map.to_host(IdKind::Uid, 0), Some(100000));
        assert_eq!(map.to_host(IdKind::Uid, 65535), Some(165535));
        assert_eq!(map.to_host(IdKind::Uid, 65536), Some(300000));
        assert_eq!(map.to_host(IdKind::Uid, 65546), None);
        assert_eq!(map.to_ns(IdKind::Uid, 100000), Some(0));
        assert_eq!(map.to_ns(IdKind::Uid, 99999), None);
        assert_eq!(map.to_ns(IdKind::Uid, 300009), Some(65545));
        assert_eq!(map.to_ns(IdKind::Uid, 300010), None);
        assert_eq!(map.to_host(IdKind::Gid, 0), Some(200000));
        assert_eq!(map.to_host(IdKind::Gid, 1), None);
        assert_eq!(map.to_ns(IdKind::Gid, 100000), None);
        assert_eq!(IdMap::default().to_host(IdKind::Uid, 0), None);
    }

    #[test]
    fn many_entries_lookup() {
        let entries: Vec<_> = (0..1000)
            .rev()
            .map(|i| e(IdKind::Uid, i * 10, 1_000_000 + i * 20, 10))
            .collect();
        let map = IdMap::new(entries).unwrap();
        for i in 0..1000u32 {
            for off in [0, 9] {
                assert_eq!(
                    map.to_host(IdKind::Uid, i * 10 + off),
                    Some(1_000_000 + i * 20 + off)
                );
                assert_eq!(
                    map.to_ns(IdKind::Uid, 1_000_000 + i * 20 + off),
                    Some(i * 10 + off)
                );
            }
            assert_eq!(map.to_ns(IdKind::Uid, 1_000_000 + i * 20 + 10), None);
        }
    }

    #[test]
    fn overlap_is_rejected_on_either_side_within_a_kind() {
        let ns = IdMap::new([
            e(IdKind::Uid, 0, 100000, 100),
            e(IdKind::Uid, 50, 300000, 100),
        ])
        .unwrap_err();
        assert_eq!(
            ns.to_string(),
            "invalid map 'u:0:100000:100 u:50:300000:100': the entries overlap in namespace uids 50-99"
        );
        let host = IdMap::new([
            e(IdKind::Gid, 0, 100000, 100),
            e(IdKind::Gid, 100, 100099, 5),
        ])
        .unwrap_err();
        assert!(host.reason.contains("host gids 100099-100099"), "{host}");
        // Different kinds never conflict; adjacent ranges do not overlap.
        IdMap::new([
            e(IdKind::Uid, 0, 100000, 100),
            e(IdKind::Gid, 0, 100000, 100),
            e(IdKind::Uid, 100, 100100, 100),
        ])
        .unwrap();
    }

    #[test]
    fn identity_maps_every_valid_id() {
        let id = IdMap::identity();
        for x in [0, 1, 100000, u32::MAX - 1] {
            assert_eq!(id.to_host(IdKind::Uid, x), Some(x));
            assert_eq!(id.to_ns(IdKind::Gid, x), Some(x));
        }
        assert_eq!(id.to_host(IdKind::Uid, u32::MAX), None);
    }

    #[test]
    fn compose_from_then_to() {
        let from = IdMap::new([
            e(IdKind::Uid, 0, 100000, 65536),
            e(IdKind::Gid, 0, 100000, 65536),
        ])
        .unwrap();
        let to = IdMap::new([
            e(IdKind::Uid, 0, 200000, 1000),
            e(IdKind::Uid, 1000, 500000, 64536),
            e(IdKind::Gid, 0, 200000, 65536),
        ])
        .unwrap();
        let (t, unmapped) = from.compose(&to);
        assert!(unmapped.is_empty());
        assert_eq!(t.to_host(IdKind::Uid, 100000), Some(200000));
        assert_eq!(t.to_host(IdKind::Uid, 100999), Some(200999));
        assert_eq!(t.to_host(IdKind::Uid, 101000), Some(500000));
        assert_eq!(t.to_host(IdKind::Uid, 165535), Some(564535));
        assert_eq!(t.to_host(IdKind::Uid, 165536), None);
        assert_eq!(t.to_host(IdKind::Gid, 165535), Some(265535));
        // Going back is the inverse.
        let (back, _) = to.compose(&from);
        for h in [100000, 100999, 101000, 165535] {
            let fwd = t.to_host(IdKind::Uid, h).unwrap();
            assert_eq!(back.to_host(IdKind::Uid, fwd), Some(h));
        }
    }

    #[test]
    fn compose_reports_ids_to_cannot_map() {
        let from = IdMap::new([e(IdKind::Uid, 0, 100000, 100)]).unwrap();
        let to = IdMap::new([
            e(IdKind::Uid, 10, 200010, 20),
            e(IdKind::Uid, 50, 200050, 10),
        ])
        .unwrap();
        let (_, unmapped) = from.compose(&to);
        assert_eq!(
            unmapped,
            vec![
                (IdKind::Uid, IdRange::new(0, 10).unwrap()),
                (IdKind::Uid, IdRange::new(30, 20).unwrap()),
                (IdKind::Uid, IdRange::new(60, 40).unwrap()),
            ]
        );
    }

    #[test]
    fn with_host_id_maps_the_caller_once() {
        let map = IdMap::new([e(IdKind::Uid, 0, 100000, 65536)]).unwrap();
        let same = map.with_host_id(IdKind::Uid, 70000).unwrap();
        assert_eq!(same.to_ns(IdKind::Uid, 70000), Some(70000));
        let above = map.with_host_id(IdKind::Uid, 1000).unwrap();
        assert_eq!(above.to_ns(IdKind::Uid, 1000), Some(65536));
        let already = map.with_host_id(IdKind::Uid, 100005).unwrap();
        assert_eq!(already, map);
        let gid = map.with_host_id(IdKind::Gid, 1000).unwrap();
        assert_eq!(gid.to_ns(IdKind::Gid, 1000), Some(1000));
    }

    #[test]
    fn inverse_and_text_round_trip() {
        let map = IdMap::new([e(IdKind::Uid, 0, 100000, 10), e(IdKind::Gid, 5, 7, 1)]).unwrap();
        let inv = map.inverse();
        assert_eq!(inv.to_host(IdKind::Uid, 100003), Some(3));
        assert_eq!(inv.to_host(IdKind::Gid, 7), Some(5));
        assert_eq!(IdMap::parse_list(&map.to_string()).unwrap(), map);
        assert!(IdMap::parse_list("u:0:1:1 bogus").is_err());
    }

    /// `n` single-id uid entries, each `u:i:base+2i:1`.
    fn uid_entries(n: u32, base: u32) -> IdMap {
        IdMap::new((0..n).map(|i| e(IdKind::Uid, i, base + 2 * i, 1))).unwrap()
    }

    #[test]
    fn check_writable_counts_extents_per_kind() {
        assert_eq!(uid_entries(339, 1000).check_writable(4096), Ok(()));
        assert_eq!(uid_entries(340, 1000).check_writable(4096), Ok(()));
        let err = uid_entries(341, 1000).check_writable(4096).unwrap_err();
        assert!(err.contains("uid map has 341 entries"), "{err}");
        assert!(err.contains("at most 340"), "{err}");
        // 340 of each kind is fine: the limit is per file.
        let both = IdMap::new((0..340).flat_map(|i| {
            [
                e(IdKind::Uid, i, 1000 + i, 1),
                e(IdKind::Gid, i, 1000 + i, 1),
            ]
        }))
        .unwrap();
        assert_eq!(both.check_writable(4096), Ok(()));
    }

    #[test]
    fn check_writable_measures_the_text_against_the_page() {
        // ~25 bytes a line: 300 lines are well past 4096 bytes, under 340 lines.
        let long = uid_entries(300, 4_000_000_000);
        let bytes = long.proc_text(IdKind::Uid).len();
        assert!(bytes > 4096);
        let err = long.check_writable(4096).unwrap_err();
        assert!(err.contains(&format!("{bytes} bytes")), "{err}");
        assert!(err.contains("4096"), "{err}");
        assert_eq!(long.check_writable(65536), Ok(()));
        // The kernel wants strictly less than a page.
        let map = uid_entries(1, 100000);
        let len = map.proc_text(IdKind::Uid).len();
        assert!(map.check_writable(len).is_err());
        assert_eq!(map.check_writable(len + 1), Ok(()));
    }

    #[test]
    fn proc_text_keeps_given_order() {
        let map = IdMap::new([e(IdKind::Uid, 1, 190000, 1), e(IdKind::Uid, 0, 1000, 1)]).unwrap();
        assert_eq!(map.proc_text(IdKind::Uid), "1 190000 1\n0 1000 1\n");
        assert_eq!(map.proc_text(IdKind::Gid), "");
        assert_eq!(map.to_string(), "u:1:190000:1 u:0:1000:1");
    }
}
