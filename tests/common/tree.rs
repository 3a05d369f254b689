//! Test trees: a builder for a small rootfs-like tree with every kind of inode and every piece of
//! metadata a shift must keep, and an fd-based snapshot of a tree's metadata to compare runs.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use idshift::idmap::IdKind;
use idshift::shift::{acl, caps};
use idshift::sys::fs::{open_dir, read_dir, statx};
use idshift::sys::xattr;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

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

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Sets an xattr on a path's last component without following it.
pub fn set_xattr(path: &Path, name: &CStr, value: &[u8]) {
    let parent = std::fs::File::open(path.parent().unwrap()).unwrap();
    let file = cpath(Path::new(path.file_name().unwrap()));
    xattr::set(parent.as_fd(), Some(&file), name, value)
        .unwrap_or_else(|e| panic!("setxattr {} {name:?}: {e}", path.display()));
}

pub fn get_xattr(path: &Path, name: &CStr) -> Option<Vec<u8>> {
    let parent = std::fs::File::open(path.parent().unwrap()).unwrap();
    let file = cpath(Path::new(path.file_name().unwrap()));
    xattr::get(parent.as_fd(), Some(&file), name).unwrap()
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

/// Every inode under `root` by relative path (`""` for root), read through dir fds with
/// O_NOATIME so that taking the snapshot changes no atime. The xattrs idshift keeps on the
/// root (`user.idshift.*`) are left out.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Meta> {
    let mut out = BTreeMap::new();
    let fd = open_dir(None, &cpath(root)).unwrap();
    walk(&fd, PathBuf::new(), &mut out);
    out
}

fn meta(dir: &OwnedFd, name: Option<&CStr>) -> Meta {
    let st = statx(dir.as_fd(), name).unwrap();
    let mut xattrs = BTreeMap::new();
    if !st.is_symlink() {
        let names = xattr::list(dir.as_fd(), name).unwrap();
        for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let key = String::from_utf8_lossy(n).into_owned();
            if key.starts_with("user.idshift.") {
                continue;
            }
            let cn = CString::new(n).unwrap();
            xattrs.insert(key, xattr::get(dir.as_fd(), name, &cn).unwrap().unwrap());
        }
    }
    let link = match (st.is_symlink(), name) {
        (true, Some(n)) => Some(
            nix::fcntl::readlinkat(dir.as_fd(), n)
                .map(PathBuf::from)
                .unwrap(),
        ),
        _ => None,
    };
    Meta {
        kind: st.file_type(),
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        ino: st.ino,
        mtime: st.mtime_ns,
        // Reading a symlink (as the snapshot does) sets its atime; idshift never reads one.
        atime: if st.is_symlink() { 0 } else { st.atime_ns },
        link,
        xattrs,
    }
}

fn walk(dir: &OwnedFd, rel: PathBuf, out: &mut BTreeMap<PathBuf, Meta>) {
    if rel.as_os_str().is_empty() {
        out.insert(rel.clone(), meta(dir, None));
    }
    for entry in read_dir(dir.as_fd()).unwrap() {
        let path = rel.join(OsStr::from_bytes(entry.name.to_bytes()));
        let m = meta(dir, Some(&entry.name));
        let is_dir = m.kind == libc::S_IFDIR;
        out.insert(path.clone(), m);
        if is_dir {
            let sub = open_dir(Some(dir.as_fd()), &entry.name).unwrap();
            walk(&sub, path, out);
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
                if let Some(v) = acl::remap(value, map).unwrap().value {
                    *value = v;
                }
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
