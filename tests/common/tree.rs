//! Test trees: a builder for a small rootfs-like tree with every kind of inode and every piece of
//! metadata a shift must keep, and a snapshot of a tree's metadata to compare runs.
//!
//! The snapshot is the tests' oracle, so it shares no code with idshift: it reads through `std`
//! (`symlink_metadata`, `read_link`) and the `xattr` crate (`l*xattr`, never following a
//! symlink), and decodes ACLs and file capabilities with the small codecs below, written from
//! the kernel's formats rather than taken from `idshift::shift`.

use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// Which id an ACL entry or a map entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Uid,
    Gid,
}

/// POSIX ACLs as the kernel stores them in `system.posix_acl_{access,default}`: a little-endian
/// u32 version (2), then entries of u16 tag, u16 permissions, u32 id.
pub mod acl {
    use super::IdKind;

    pub const ACCESS: &std::ffi::CStr = c"system.posix_acl_access";
    pub const DEFAULT: &std::ffi::CStr = c"system.posix_acl_default";
    pub const VERSION: u32 = 2;
    pub const TAG_USER_OBJ: u16 = 0x01;
    pub const TAG_USER: u16 = 0x02;
    pub const TAG_GROUP_OBJ: u16 = 0x04;
    pub const TAG_GROUP: u16 = 0x08;
    pub const TAG_MASK: u16 = 0x10;
    pub const TAG_OTHER: u16 = 0x20;
    pub const UNDEFINED_ID: u32 = u32::MAX;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct AclEntry {
        pub tag: u16,
        pub perm: u16,
        pub id: u32,
    }

    pub fn encode(entries: &[AclEntry]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    /// The entries, or why the bytes are no ACL.
    pub fn decode(b: &[u8]) -> Result<Vec<AclEntry>, String> {
        if b.len() < 4 || (b.len() - 4) % 8 != 0 {
            return Err(format!("an ACL of {} bytes", b.len()));
        }
        let version = u32::from_le_bytes(b[..4].try_into().unwrap());
        if version != VERSION {
            return Err(format!("ACL version {version}"));
        }
        Ok(b[4..]
            .chunks_exact(8)
            .map(|c| AclEntry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect())
    }

    /// The ACL with every named user and group entry's id mapped (`None`: left as it is).
    pub fn remap(b: &[u8], map: &dyn Fn(IdKind, u32) -> Option<u32>) -> Vec<u8> {
        let mut entries = decode(b).unwrap();
        for e in &mut entries {
            let kind = match e.tag {
                TAG_USER => IdKind::Uid,
                TAG_GROUP => IdKind::Gid,
                _ => continue,
            };
            e.id = map(kind, e.id).unwrap_or(e.id);
        }
        encode(&entries)
    }
}

/// `security.capability` as the kernel stores it (`struct vfs_ns_cap_data`): a little-endian
/// u32 magic (revision in the top byte, bit 0 the effective flag), two (permitted, inheritable)
/// u32 pairs — one in revision 1 — and, in revision 3 only, the rootid.
pub mod caps {
    pub const NAME: &std::ffi::CStr = c"security.capability";
    pub const REVISION_1: u32 = 0x0100_0000;
    pub const REVISION_2: u32 = 0x0200_0000;
    pub const REVISION_3: u32 = 0x0300_0000;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct FileCaps {
        pub magic: u32,
        pub data: Vec<u32>,
        /// 0 for revisions 1 and 2 (host root).
        pub rootid: u32,
    }

    pub fn decode(b: &[u8]) -> Result<FileCaps, String> {
        let word = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        if b.len() < 4 {
            return Err(format!("a capability of {} bytes", b.len()));
        }
        let magic = word(0);
        let len = match magic & 0xff00_0000 {
            REVISION_1 => 12,
            REVISION_2 => 20,
            REVISION_3 => 24,
            r => return Err(format!("capability revision {:#x}", r >> 24)),
        };
        if b.len() != len {
            return Err(format!(
                "a revision {} capability of {} bytes",
                magic >> 24,
                b.len()
            ));
        }
        Ok(FileCaps {
            magic,
            data: (4..len.min(20)).step_by(4).map(word).collect(),
            rootid: if len == 24 { word(20) } else { 0 },
        })
    }

    pub fn encode(c: &FileCaps) -> Vec<u8> {
        let mut v = c.magic.to_le_bytes().to_vec();
        for w in &c.data {
            v.extend_from_slice(&w.to_le_bytes());
        }
        if c.magic & 0xff00_0000 == REVISION_3 {
            v.extend_from_slice(&c.rootid.to_le_bytes());
        }
        v
    }

    impl FileCaps {
        /// The same capabilities owned by `rootid`, as the kernel writes them: revision 3,
        /// or revision 2 for rootid 0 (revision 1 stays 1).
        pub fn with_rootid(&self, rootid: u32) -> FileCaps {
            let flags = self.magic & 0x00ff_ffff;
            let revision = match (rootid, self.magic & 0xff00_0000) {
                (0, REVISION_1) => REVISION_1,
                (0, _) => REVISION_2,
                _ => REVISION_3,
            };
            FileCaps {
                magic: revision | flags,
                data: self.data.clone(),
                rootid,
            }
        }
    }
}

/// A v2 `cap_net_raw+ep` capability, as `setcap` stores it for host root.
pub const CAP_NET_RAW_V2: [u8; 20] = [
    0x01, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

pub fn acl_bytes(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    acl::encode(
        &entries
            .iter()
            .map(|&(tag, perm, id)| acl::AclEntry { tag, perm, id })
            .collect::<Vec<_>>(),
    )
}

/// An ACL like `setfacl -m u:1000:rw,u:70000:r,g:50:r` makes (70000: outside a 65536 map).
pub fn sample_acl() -> Vec<u8> {
    use acl::*;
    acl_bytes(&[
        (TAG_USER_OBJ, 6, UNDEFINED_ID),
        (TAG_USER, 6, 1000),
        (TAG_USER, 4, 70000),
        (TAG_GROUP_OBJ, 4, UNDEFINED_ID),
        (TAG_GROUP, 4, 50),
        (TAG_MASK, 6, UNDEFINED_ID),
        (TAG_OTHER, 0, UNDEFINED_ID),
    ])
}

/// A default ACL granting uid 1000 rwx.
pub fn sample_default_acl() -> Vec<u8> {
    use acl::*;
    acl_bytes(&[
        (TAG_USER_OBJ, 7, UNDEFINED_ID),
        (TAG_USER, 7, 1000),
        (TAG_GROUP_OBJ, 5, UNDEFINED_ID),
        (TAG_MASK, 7, UNDEFINED_ID),
        (TAG_OTHER, 5, UNDEFINED_ID),
    ])
}

fn xname(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

/// Sets an xattr on a path's last component without following it (`lsetxattr`). A filesystem
/// that does not support the name skips the test (declare `Need::ScratchXattrs` to skip it up
/// front).
pub fn set_xattr(path: &Path, name: &CStr, value: &[u8]) {
    if let Err(e) = xattr::set(path, xname(name), value) {
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            crate::common::skip(format!(
                "{} does not support {name:?} xattrs",
                path.display()
            ));
        }
        panic!("lsetxattr {} {name:?}: {e}", path.display());
    }
}

/// An xattr of a path's last component, not following it (`lgetxattr`).
pub fn get_xattr(path: &Path, name: &CStr) -> Option<Vec<u8>> {
    xattr::get(path, xname(name))
        .unwrap_or_else(|e| panic!("lgetxattr {} {name:?}: {e}", path.display()))
}

fn file(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::fs::write(path, b"content\n").unwrap();
    own(path, uid, gid, mode);
}

fn dir(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::fs::create_dir(path).unwrap();
    own(path, uid, gid, mode);
}

fn own(path: &Path, uid: u32, gid: u32, mode: u32) {
    lchown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn link(target: &str, path: &Path, uid: u32, gid: u32) {
    symlink(target, path).unwrap();
    lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Builds a rootfs-like tree in the host view (root is 0) at `root`, which must not exist.
/// Needs root. Every id lies in 0..65536 except the outliers under `opt/` and one ACL entry.
pub fn build_sample(root: &Path) {
    dir(root, 0, 0, 0o755);
    for (d, uid, gid, mode) in [
        ("bin", 0, 0, 0o755),
        ("etc", 0, 0, 0o755),
        ("usr", 0, 0, 0o755),
        ("usr/bin", 0, 0, 0o755),
        ("home", 0, 0, 0o755),
        ("home/user", 1000, 1000, 0o700),
        ("home/locked", 0, 0, 0o000),
        ("tmp", 0, 0, 0o1777),
        ("srv", 0, 50, 0o2775),
        ("dev", 0, 0, 0o755),
        ("var", 0, 0, 0o755),
        ("opt", 0, 0, 0o755),
    ] {
        let p = root.join(d);
        if d == "home/locked" {
            std::fs::create_dir(&p).unwrap();
            file(&p.join("secret"), 0, 0, 0o600);
            own(&p, uid, gid, mode);
        } else {
            dir(&p, uid, gid, mode);
        }
    }
    file(&root.join("bin/su"), 0, 0, 0o4755);
    file(&root.join("bin/wall"), 0, 5, 0o2755);
    file(&root.join("bin/both"), 0, 0, 0o6755);
    file(&root.join("bin/sticky-exec"), 2, 2, 0o1755);
    file(&root.join("usr/bin/ping"), 0, 0, 0o755);
    set_xattr(&root.join("usr/bin/ping"), caps::NAME, &CAP_NET_RAW_V2);
    file(&root.join("usr/bin/suidcap"), 0, 0, 0o4755);
    set_xattr(&root.join("usr/bin/suidcap"), caps::NAME, &CAP_NET_RAW_V2);
    file(&root.join("etc/shadow"), 0, 42, 0o640);
    file(&root.join("etc/acl"), 0, 0, 0o640);
    set_xattr(&root.join("etc/acl"), acl::ACCESS, &sample_acl());
    set_xattr(&root.join("home"), acl::DEFAULT, &sample_default_acl());
    file(&root.join("etc/notes"), 0, 0, 0o644);
    set_xattr(&root.join("etc/notes"), c"user.note", b"keep me");
    set_xattr(
        &root.join("etc/notes"),
        c"trusted.idshift-test",
        b"kept too",
    );
    file(&root.join("home/user/.profile"), 1000, 1000, 0o644);
    file(&root.join("etc/zero-mode"), 3, 3, 0o000);
    file(&root.join("etc/hard"), 1000, 100, 0o644);
    std::fs::hard_link(root.join("etc/hard"), root.join("var/hard2")).unwrap();
    std::fs::hard_link(root.join("etc/hard"), root.join("home/user/hard3")).unwrap();
    link("/etc/passwd", &root.join("etc/abs-link"), 0, 0);
    link(
        "../../../../../../../../etc/passwd",
        &root.join("etc/rel-link"),
        1000,
        1000,
    );
    link("no-such-target", &root.join("etc/dangling"), 0, 0);
    link("/etc", &root.join("etc/host-etc"), 0, 0);
    let dev = |name: &str, kind: SFlag, major, minor, uid, gid| {
        let p = root.join("dev").join(name);
        mknod(
            &p,
            kind,
            Mode::from_bits_truncate(0o660),
            makedev(major, minor),
        )
        .unwrap();
        lchown(&p, Some(uid), Some(gid)).unwrap();
    };
    dev("null", SFlag::S_IFCHR, 1, 3, 0, 0);
    dev("loop0", SFlag::S_IFBLK, 7, 0, 0, 6);
    dev("fifo", SFlag::S_IFIFO, 0, 0, 33, 33);
    let sock = root.join("dev/socket");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    lchown(&sock, Some(101), Some(101)).unwrap();
    file(
        &root.join(OsStr::from_bytes(b"etc/caf\xe9-latin1")),
        7,
        7,
        0o644,
    );
    file(&root.join("opt/outlier"), 70000, 70000, 0o644);
    file(&root.join("opt/half"), 65536, 10, 0o644);
}

/// One inode's metadata, as a snapshot keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub mtime: i128,
    pub atime: i128,
    pub link: Option<PathBuf>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// `b:0:BASE:65536` as a function (old host id → new), outliers `None`.
pub fn plus(base: u32) -> impl Fn(IdKind, u32) -> Option<u32> {
    move |_, id| (id < 65536).then_some(id + base)
}

/// A sample tree at TMP/rootfs (the journal goes beside it, in TMP).
pub fn sample() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    build_sample(&root);
    (tmp, root)
}

/// Where a shift of `root` keeps its journal: `PARENT/.NAME.idshift-journal`.
pub fn journal_of(root: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(root.file_name().unwrap());
    name.push(".idshift-journal");
    root.parent().unwrap().join(name)
}

/// Every inode under `root` by relative path (`""` for root). `lstat` and `llistxattr` change
/// no atime; reading a symlink does, so symlinks' atimes are left out. The xattrs idshift keeps
/// on the root (`user.idshift.*`) are left out.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut out = BTreeMap::new();
    walk(root, PathBuf::new(), &mut out);
    out
}

fn meta(path: &Path) -> Meta {
    let st =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let is_link = st.file_type().is_symlink();
    let mut xattrs = BTreeMap::new();
    if !is_link {
        let names =
            xattr::list(path).unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()));
        for n in names {
            let key = n.to_string_lossy().into_owned();
            if key.starts_with("user.idshift.") {
                continue;
            }
            let value = xattr::get(path, &n)
                .unwrap_or_else(|e| panic!("lgetxattr {} {key}: {e}", path.display()))
                .unwrap_or_default();
            xattrs.insert(key, value);
        }
    }
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Meta {
        kind: st.mode() & libc::S_IFMT,
        mode: st.mode() & 0o7777,
        uid: st.uid(),
        gid: st.gid(),
        ino: st.ino(),
        mtime: ns(st.mtime(), st.mtime_nsec()),
        // Reading a symlink (as the snapshot does) sets its atime; idshift never reads one.
        atime: if is_link {
            0
        } else {
            ns(st.atime(), st.atime_nsec())
        },
        link: is_link.then(|| std::fs::read_link(path).unwrap()),
        xattrs,
    }
}

fn walk(dir: &Path, rel: PathBuf, out: &mut BTreeMap<PathBuf, Meta>) {
    use nix::fcntl::OFlag;
    if rel.as_os_str().is_empty() {
        out.insert(rel.clone(), meta(dir));
    }
    // O_NOATIME: reading the directory must not change its atime (std's read_dir would).
    let mut d = nix::dir::Dir::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOATIME | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("opendir {}: {e}", dir.display()));
    let names: Vec<std::ffi::OsString> = d
        .iter()
        .map(|e| OsStr::from_bytes(e.unwrap().file_name().to_bytes()).to_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    for name in names {
        let path = rel.join(&name);
        let full = dir.join(&name);
        let m = meta(&full);
        let is_dir = m.kind == libc::S_IFDIR;
        out.insert(path.clone(), m);
        if is_dir {
            walk(&full, path, out);
        }
    }
}

/// Checks that `after` is `before` shifted by `map` (old host id → new, `None` = outlier left):
/// same paths, kinds, modes, inode numbers, times and other xattrs; ids, ACL entries and
/// capability rootids mapped.
pub fn assert_shifted(
    before: &BTreeMap<PathBuf, Meta>,
    after: &BTreeMap<PathBuf, Meta>,
    map: &dyn Fn(IdKind, u32) -> Option<u32>,
) {
    let keys_b: Vec<_> = before.keys().collect();
    let keys_a: Vec<_> = after.keys().collect();
    assert_eq!(keys_b, keys_a, "the set of paths changed");
    for (path, b) in before {
        let a = &after[path];
        let id = |k, x| map(k, x).unwrap_or(x);
        let mut want = b.clone();
        want.uid = id(IdKind::Uid, b.uid);
        want.gid = id(IdKind::Gid, b.gid);
        for (name, value) in &mut want.xattrs {
            if name == "security.capability" {
                let c = caps::decode(value).unwrap();
                if let Some(r) = map(IdKind::Uid, c.rootid) {
                    *value = caps::encode(&c.with_rootid(r));
                }
            } else if name.starts_with("system.posix_acl_") {
                *value = acl::remap(value, map);
            }
        }
        assert_eq!(a, &want, "{}", path.display());
    }
}

/// The same, ignoring times: for comparing two runs on two copies of a tree.
pub fn without_times_and_inodes(s: &BTreeMap<PathBuf, Meta>) -> BTreeMap<PathBuf, Meta> {
    s.iter()
        .map(|(p, m)| {
            (
                p.clone(),
                Meta {
                    ino: 0,
                    mtime: 0,
                    atime: 0,
                    ..m.clone()
                },
            )
        })
        .collect()
}

/// Asserts two snapshots are equal, naming the first difference (not dumping both trees).
#[track_caller]
pub fn assert_same_tree(a: &BTreeMap<PathBuf, Meta>, b: &BTreeMap<PathBuf, Meta>, what: &str) {
    if a == b {
        return;
    }
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).take(5).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).take(5).collect();
    let differ = a.iter().find(|(k, v)| b.get(*k).is_some_and(|w| w != *v));
    panic!(
        "{what}: trees differ; only in the first: {only_a:?}; only in the second: {only_b:?}; \
         first changed: {:?} -> {:?}",
        differ,
        differ.map(|(k, _)| &b[k])
    );
}
