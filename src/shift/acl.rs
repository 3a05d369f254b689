//! Pure codec for the POSIX ACL xattrs `system.posix_acl_access` and `system.posix_acl_default`:
//! a little-endian header `u32 version = 2`, then 8-byte entries `u16 tag, u16 perm, u32 id`.
//! Only `ACL_USER` and `ACL_GROUP` entries carry an id.

use crate::idmap::IdKind;

pub const ACCESS: &std::ffi::CStr = c"system.posix_acl_access";
pub const DEFAULT: &std::ffi::CStr = c"system.posix_acl_default";

const VERSION: u32 = 2;
pub const TAG_USER_OBJ: u16 = 0x01;
pub const TAG_USER: u16 = 0x02;
pub const TAG_GROUP_OBJ: u16 = 0x04;
pub const TAG_GROUP: u16 = 0x08;
pub const TAG_MASK: u16 = 0x10;
pub const TAG_OTHER: u16 = 0x20;
/// The id of entries that name no one.
pub const UNDEFINED_ID: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

impl AclEntry {
    /// The kind of id the entry names, if it names one.
    pub fn id_kind(&self) -> Option<IdKind> {
        match self.tag {
            TAG_USER => Some(IdKind::Uid),
            TAG_GROUP => Some(IdKind::Gid),
            _ => None,
        }
    }
}

/// A malformed ACL xattr value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclError(pub String);

impl std::fmt::Display for AclError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed POSIX ACL: {}", self.0)
    }
}

pub fn decode(bytes: &[u8]) -> Result<Vec<AclEntry>, AclError> {
    if bytes.len() < 4 || (bytes.len() - 4) % 8 != 0 {
        return Err(AclError(format!("{} bytes is not 4 + 8n", bytes.len())));
    }
    let version = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(AclError(format!("version {version}, expected {VERSION}")));
    }
    Ok(bytes[4..]
        .chunks_exact(8)
        .map(|e| AclEntry {
            tag: u16::from_le_bytes([e[0], e[1]]),
            perm: u16::from_le_bytes([e[2], e[3]]),
            id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect())
}

pub fn encode(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&VERSION.to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    out
}

/// What remapping did to an ACL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remapped {
    /// The new value, if any entry changed.
    pub value: Option<Vec<u8>>,
    /// Entries whose id `map` does not cover: left as they are.
    pub outliers: Vec<(IdKind, u32)>,
}

/// Remaps the ids of `ACL_USER`/`ACL_GROUP` entries through `map`; entries it does not map stay.
pub fn remap(bytes: &[u8], map: impl Fn(IdKind, u32) -> Option<u32>) -> Result<Remapped, AclError> {
    let mut entries = decode(bytes)?;
    let mut changed = false;
    let mut outliers = Vec::new();
    for e in &mut entries {
        let Some(kind) = e.id_kind() else { continue };
        match map(kind, e.id) {
            Some(new) => {
                changed |= new != e.id;
                e.id = new;
            }
            None => outliers.push((kind, e.id)),
        }
    }
    Ok(Remapped {
        value: changed.then(|| encode(&entries)),
        outliers,
    })
}

/// The first `ACL_USER` or `ACL_GROUP` id named twice in an ACL, if any (the kernel and libacl
/// refuse such an ACL; a remap can produce one when an entry maps onto an id already named).
pub fn duplicate(bytes: &[u8]) -> Option<(IdKind, u32)> {
    let entries = decode(bytes).ok()?;
    let mut seen = std::collections::HashSet::new();
    entries
        .iter()
        .filter_map(|e| Some((e.id_kind()?, e.id)))
        .find(|&k| !seen.insert(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `setfacl -m u:1000:rw,g:50:r FILE` on a 0640 file, as the kernel stores it.
    fn sample() -> Vec<u8> {
        encode(&[
            AclEntry {
                tag: TAG_USER_OBJ,
                perm: 6,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: TAG_USER,
                perm: 6,
                id: 1000,
            },
            AclEntry {
                tag: TAG_GROUP_OBJ,
                perm: 4,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: TAG_GROUP,
                perm: 4,
                id: 50,
            },
            AclEntry {
                tag: TAG_MASK,
                perm: 6,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: TAG_OTHER,
                perm: 0,
                id: UNDEFINED_ID,
            },
        ])
    }

    #[test]
    fn layout_is_the_kernels() {
        let b = sample();
        assert_eq!(b.len(), 4 + 6 * 8);
        assert_eq!(&b[..4], &[2, 0, 0, 0]);
        // Second entry: ACL_USER, rw-, id 1000.
        assert_eq!(&b[12..20], &[2, 0, 6, 0, 0xe8, 0x03, 0, 0]);
        assert_eq!(decode(&b).unwrap().len(), 6);
    }

    #[test]
    fn remaps_user_and_group_entries_only() {
        let shift = |_: IdKind, id: u32| (id < 65536).then_some(id + 100000);
        let r = remap(&sample(), shift).unwrap();
        let e = decode(r.value.as_ref().unwrap()).unwrap();
        assert_eq!(e[1].id, 101000);
        assert_eq!(e[3].id, 100050);
        assert_eq!(e[0].id, UNDEFINED_ID, "USER_OBJ untouched");
        assert_eq!(e[5].id, UNDEFINED_ID, "OTHER untouched");
        assert!(r.outliers.is_empty());
        // And back, byte for byte.
        let back = remap(r.value.as_ref().unwrap(), |_, id| Some(id - 100000)).unwrap();
        assert_eq!(back.value.unwrap(), sample());
    }

    #[test]
    fn outlier_entries_stay_and_are_reported() {
        let only_uids = |k: IdKind, id: u32| (k == IdKind::Uid).then_some(id + 1);
        let r = remap(&sample(), only_uids).unwrap();
        let e = decode(r.value.as_ref().unwrap()).unwrap();
        assert_eq!((e[1].id, e[3].id), (1001, 50));
        assert_eq!(r.outliers, vec![(IdKind::Gid, 50)]);
        let none = remap(&sample(), |_, _| None).unwrap();
        assert_eq!(none.value, None);
        assert_eq!(none.outliers.len(), 2);
    }

    #[test]
    fn unchanged_when_ids_map_to_themselves() {
        assert_eq!(remap(&sample(), |_, id| Some(id)).unwrap().value, None);
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 0, 0, 0, 1]).is_err());
        assert_eq!(
            decode(&[1, 0, 0, 0]).unwrap_err().to_string(),
            "malformed POSIX ACL: version 1, expected 2"
        );
        assert_eq!(decode(&[2, 0, 0, 0]).unwrap(), vec![]);
    }
}
