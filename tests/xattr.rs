//! idshift's own xattr calls (`sys::xattr`: the `*xattrat` syscalls, and the `/proc/self/fd`
//! fallback for kernels without them), checked against the `xattr` crate as an independent
//! reader and writer. Needs user xattrs on the scratch filesystem.

mod common;

use std::os::fd::AsFd;
use std::path::Path;

use common::*;
use idshift::sys::xattr as ours;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![trial!(
        xattrs_through_at_calls_and_through_the_fallback,
        Need::ScratchXattrs
    )])
}

/// Sets and reads through idshift and through the `xattr` crate, on a file, past a symlink
/// (never followed) and on the directory itself.
fn roundtrip(dir: &Path) {
    std::fs::write(dir.join("f"), "x").unwrap();
    std::os::unix::fs::symlink("f", dir.join("link")).unwrap();
    let d = std::fs::File::open(dir).unwrap();
    let fd = d.as_fd();
    let f = Some(c"f");
    let long = vec![b'v'; 3000];
    ours::set(fd, f, c"user.idshift.test", &long).unwrap();
    assert_eq!(
        xattr::get(dir.join("f"), "user.idshift.test").unwrap(),
        Some(long.clone()),
        "the crate reads what idshift wrote"
    );
    xattr::set(dir.join("f"), "user.other", b"o").unwrap();
    assert_eq!(ours::get(fd, f, c"user.other").unwrap().unwrap(), b"o");
    assert_eq!(
        ours::get(fd, f, c"user.idshift.test").unwrap().unwrap(),
        long
    );
    assert_eq!(ours::get(fd, f, c"user.none").unwrap(), None);
    let names = ours::list(fd, f).unwrap();
    for want in [&b"user.idshift.test"[..], b"user.other"] {
        assert!(names.split(|&b| b == 0).any(|n| n == want), "{want:?}");
    }
    // The symlink is not followed: its own (empty) list, not f's.
    let link_names = ours::list(fd, Some(c"link")).unwrap();
    assert!(!link_names
        .split(|&b| b == 0)
        .any(|n| n == b"user.idshift.test"));
    // The directory itself.
    ours::set(fd, None, c"user.idshift.dir", b"d").unwrap();
    assert_eq!(
        xattr::get(dir, "user.idshift.dir").unwrap(),
        Some(b"d".to_vec())
    );
    assert_eq!(
        ours::get(fd, None, c"user.idshift.dir").unwrap().unwrap(),
        b"d"
    );
    ours::remove_self(fd, c"user.idshift.dir").unwrap();
    assert_eq!(xattr::get(dir, "user.idshift.dir").unwrap(), None);
}

fn xattrs_through_at_calls_and_through_the_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("at")).unwrap();
    roundtrip(&tmp.path().join("at"));
    // This process only: the test binary runs its one test and exits.
    ours::disable_at_calls_for_tests();
    std::fs::create_dir(tmp.path().join("fallback")).unwrap();
    roundtrip(&tmp.path().join("fallback"));
}
