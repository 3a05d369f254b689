//! Pure codec for `security.capability` (`struct vfs_cap_data`): a little-endian `magic_etc`
//! (revision in the top byte, `VFS_CAP_FLAGS_EFFECTIVE` in bit 0), then `(permitted,
//! inheritable)` words — one pair for revision 1, two for 2 and 3 — and, for revision 3, the
//! `rootid`: the host uid that is root for this capability. Revisions 1 and 2 mean rootid 0.

pub const NAME: &std::ffi::CStr = c"security.capability";

const REVISION_MASK: u32 = 0xFF00_0000;
pub const REVISION_1: u32 = 0x0100_0000;
pub const REVISION_2: u32 = 0x0200_0000;
pub const REVISION_3: u32 = 0x0300_0000;
const SIZE_1: usize = 4 + 8;
const SIZE_2: usize = 4 + 2 * 8;
const SIZE_3: usize = SIZE_2 + 4;

/// A decoded file capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCaps {
    /// `REVISION_1`, `REVISION_2` or `REVISION_3`.
    pub revision: u32,
    /// The low bits of `magic_etc` (`VFS_CAP_FLAGS_EFFECTIVE`).
    pub flags: u32,
    /// `(permitted, inheritable)` words, low then high.
    pub data: [(u32, u32); 2],
    /// The uid that is root for these capabilities; 0 for revisions 1 and 2.
    pub rootid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapsError(pub String);

impl std::fmt::Display for CapsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed security.capability: {}", self.0)
    }
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn decode(b: &[u8]) -> Result<FileCaps, CapsError> {
    if b.len() < 4 {
        return Err(CapsError(format!("{} bytes", b.len())));
    }
    let magic = word(b, 0);
    let revision = magic & REVISION_MASK;
    let want = match revision {
        REVISION_1 => SIZE_1,
        REVISION_2 => SIZE_2,
        REVISION_3 => SIZE_3,
        _ => return Err(CapsError(format!("unknown revision {:#x}", revision >> 24))),
    };
    if b.len() != want {
        return Err(CapsError(format!(
            "revision {} takes {want} bytes, found {}",
            revision >> 24,
            b.len()
        )));
    }
    let mut data = [(word(b, 4), word(b, 8)), (0, 0)];
    if revision != REVISION_1 {
        data[1] = (word(b, 12), word(b, 16));
    }
    Ok(FileCaps {
        revision,
        flags: magic & !REVISION_MASK,
        data,
        rootid: if revision == REVISION_3 {
            word(b, 20)
        } else {
            0
        },
    })
}

pub fn encode(c: &FileCaps) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE_3);
    out.extend_from_slice(&(c.revision | c.flags).to_le_bytes());
    let pairs = if c.revision == REVISION_1 { 1 } else { 2 };
    for (p, i) in &c.data[..pairs] {
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&i.to_le_bytes());
    }
    if c.revision == REVISION_3 {
        out.extend_from_slice(&c.rootid.to_le_bytes());
    }
    out
}

impl FileCaps {
    /// The same capabilities with another rootid: revision 3 unless the new rootid is 0, which
    /// is written as revision 2 (or 1, if it was 1), as the kernel itself would store it.
    pub fn with_rootid(&self, rootid: u32) -> FileCaps {
        let revision = match (rootid, self.revision) {
            (0, REVISION_1) => REVISION_1,
            (0, _) => REVISION_2,
            _ => REVISION_3,
        };
        FileCaps {
            revision,
            rootid,
            ..self.clone()
        }
    }
}

/// Remaps the rootid through `map`; `None` when `map` does not cover it (left as it is).
pub fn remap(b: &[u8], map: impl Fn(u32) -> Option<u32>) -> Result<Option<Vec<u8>>, CapsError> {
    let caps = decode(b)?;
    Ok(map(caps.rootid).map(|root| encode(&caps.with_rootid(root))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `setcap cap_net_raw+ep` as the kernel stores it for host root: revision 2.
    const PING_V2: [u8; 20] = [
        0x01, 0x00, 0x00, 0x02, // revision 2, effective
        0x00, 0x20, 0x00, 0x00, // permitted low: CAP_NET_RAW (13)
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn decodes_v2_as_rootid_0() {
        let c = decode(&PING_V2).unwrap();
        assert_eq!((c.revision, c.flags, c.rootid), (REVISION_2, 1, 0));
        assert_eq!(c.data[0].0, 1 << 13);
        assert_eq!(encode(&c), PING_V2);
    }

    #[test]
    fn shift_into_a_container_writes_v3_and_back_is_byte_identical() {
        let v3 = remap(&PING_V2, |r| Some(r + 100000)).unwrap().unwrap();
        assert_eq!(v3.len(), 24);
        assert_eq!(&v3[..4], &[0x01, 0, 0, 0x03]);
        assert_eq!(&v3[20..], &100000u32.to_le_bytes());
        let c = decode(&v3).unwrap();
        assert_eq!(
            (c.revision, c.rootid, c.data[0].0),
            (REVISION_3, 100000, 1 << 13)
        );
        let back = remap(&v3, |r| r.checked_sub(100000)).unwrap().unwrap();
        assert_eq!(back, PING_V2);
        // Between two containers: rootid to rootid, still v3.
        let moved = remap(&v3, |r| Some(r + 100000)).unwrap().unwrap();
        assert_eq!(decode(&moved).unwrap().rootid, 200000);
    }

    #[test]
    fn rootid_outside_the_map_is_left() {
        assert_eq!(remap(&PING_V2, |_| None).unwrap(), None);
    }

    #[test]
    fn revision_1_keeps_its_size_at_rootid_0() {
        let v1 = [0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0];
        let c = decode(&v1).unwrap();
        assert_eq!((c.revision, c.rootid), (REVISION_1, 0));
        assert_eq!(encode(&c), v1);
        let v3 = remap(&v1, |_| Some(5)).unwrap().unwrap();
        assert_eq!(decode(&v3).unwrap().rootid, 5);
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(decode(&[1, 2]).is_err());
        assert!(decode(&PING_V2[..19]).is_err());
        let mut bad = PING_V2;
        bad[3] = 0x07;
        assert_eq!(
            decode(&bad).unwrap_err().to_string(),
            "malformed security.capability: unknown revision 0x7"
        );
    }
}
