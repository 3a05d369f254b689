//! `idshift mount` / `idshift umount`: idmapped bind mounts on ext4 and tmpfs, as root; the
//! refusals (a filesystem without idmapped-mount support, a mount idshift did not make, no root).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(mount_on_ext4_or_the_root_filesystem, Need::Root),
        trial!(mount_on_tmpfs, Need::Root, Need::Tmpfs, Need::IdmappedTmpfs),
        trial!(
            recursive_mount_shows_submounts_too,
            Need::Root,
            Need::Tmpfs,
            Need::IdmappedTmpfs
        ),
        trial!(
            a_filesystem_without_idmapped_mounts_is_named,
            Need::Root,
            Need::Tmpfs
        ),
        trial!(
            umount_refuses_what_idshift_did_not_mount,
            Need::Root,
            Need::Tmpfs
        ),
        trial!(mount_needs_root_and_a_valid_map, Need::Root, Need::TestUser),
        trial!(
            mount_is_nosuid_unless_asked_and_warns_when_it_shows_setuid_root,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            umount_refuses_an_idmapped_mount_idshift_did_not_make,
            Need::Root,
            Need::Tool("unshare")
        ),
    ])
}

/// Unmounts DST when a test ends, even a failing one.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A fresh filesystem of type `fs` mounted at `at`, unmounted when the guard drops.
fn mount_fs(fs: &str, at: &Path) -> Mounted {
    nix::mount::mount(
        Some(fs),
        at,
        Some(fs),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    Mounted(at.to_path_buf())
}

fn mount_shows_the_tree_shifted(base: &Path) {
    let tmp = tempfile::tempdir_in(base).unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    build_sample(&src);
    std::fs::create_dir(&dst).unwrap();
    let before = snapshot(&src);

    let out = run(&mut idshift(&[
        "mount",
        "-m",
        // Wide enough for the sample's outliers: through an idmapped mount an unmapped id shows
        // as the overflow id (owners) or -1 (ACL entries).
        "b:0:100000:131072",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]));
    assert_code(&out, 0);
    let _guard = Mounted(dst.clone());

    // Every id, ACL entry and capability rootid is shown shifted at DST...
    let shown = snapshot(&dst);
    assert_shifted(&before, &shown, &|_, id| {
        (id < 131072).then_some(id + 100000)
    });
    // ...status through the mount sees the container map...
    let status = run(&mut idshift(&["status", dst.to_str().unwrap(), "--json"]));
    assert_code(&status, 0);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (v["root_uid"].as_u64(), v["root_gid"].as_u64()),
        (Some(100000), Some(100000)),
        "{v}"
    );
    assert_eq!(v["schema"], 2, "{v}");
    assert_eq!(v["apparent_map"]["view"]["uid"][0]["host"], 100000, "{v}");
    assert_eq!(v["apparent_map"]["view"]["gid"][0]["host"], 100000, "{v}");
    // ...and nothing on disk changed.
    assert_eq!(snapshot(&src), before);

    // A chown through the mount lands on disk mapped back: 100001:100002 is 1:2.
    nix::unistd::chown(&dst.join("etc"), Some(100001.into()), Some(100002.into())).unwrap();
    assert_eq!(owner(&src.join("etc")), (1, 2));

    let out = run(&mut idshift(&["umount", dst.to_str().unwrap()]));
    assert_code(&out, 0);
    let inside: Vec<_> = std::fs::read_dir(&dst).unwrap().collect();
    assert!(inside.is_empty(), "DST still shows the tree after umount");
}

fn mount_on_ext4_or_the_root_filesystem() {
    let Some(_) = require!(Root) else { return };
    mount_shows_the_tree_shifted(Path::new("/var/tmp"));
}

fn mount_on_tmpfs() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let _fs = mount_fs("tmpfs", tmp.path());
    mount_shows_the_tree_shifted(tmp.path());
}

fn recursive_mount_shows_submounts_too() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (src, dst, sub) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("src/sub"),
    );
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::create_dir(&dst).unwrap();
    let _sub = mount_fs("tmpfs", &sub);
    std::fs::write(sub.join("f"), b"x").unwrap();
    for (flag, want) in [(None, None), (Some("--recursive"), Some((200000, 200000)))] {
        let mut args = vec!["mount", "-m", "b:0:200000:65536"];
        args.extend(flag);
        args.extend([src.to_str().unwrap(), dst.to_str().unwrap()]);
        assert_code(&run(&mut idshift(&args)), 0);
        let _guard = Mounted(dst.clone());
        assert_eq!(owner(&dst.join("sub")).0, 200000);
        // Without --recursive the submount is not part of the clone: an empty directory.
        let file = dst.join("sub/f");
        match want {
            Some(ids) => assert_eq!(owner(&file), ids),
            None => assert!(!file.exists()),
        }
        assert_code(&run(&mut idshift(&["umount", dst.to_str().unwrap()])), 0);
    }
}

fn a_filesystem_without_idmapped_mounts_is_named() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    // ramfs has no FS_ALLOW_IDMAP.
    let _fs = mount_fs("ramfs", &src);
    let out = run(&mut idshift(&[
        "mount",
        "-m",
        "b:0:100000:65536",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]));
    let err = assert_one_error_line(&out, 1, "does not support idmapped mounts");
    assert!(err.contains("(ramfs)"), "{err}");
    // Nothing was mounted at DST.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dst.to_str().unwrap()), "{mounts}");
}

fn umount_refuses_what_idshift_did_not_mount() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let out = run(&mut idshift(&["umount", dir.to_str().unwrap()]));
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("not a mount point"),
        "{}",
        stderr(&out)
    );
    let _fs = mount_fs("tmpfs", &dir);
    let out = run(&mut idshift(&["umount", dir.to_str().unwrap()]));
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("not an idmapped mount (tmpfs"),
        "{}",
        stderr(&out)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts.contains(dir.to_str().unwrap()),
        "the tmpfs was unmounted"
    );
}

fn mount_needs_root_and_a_valid_map() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().to_str().unwrap();
    let out = run(&mut idshift_as(
        env.user(),
        &["mount", "-m", "b:0:200000:65536", p, p],
    ));
    assert_code(&out, 1);
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
    let out = run(&mut idshift(&["mount", "-m", "b:0:200000:0", p, p]));
    assert_code(&out, 2);
    assert!(stderr(&out).contains("b:0:200000:0"), "{}", stderr(&out));
    // A uid-only (or gid-only) map: the missing half is named, not the filesystem.
    for (map, missing) in [
        ("u:0:200000:65536", "no gid entries"),
        ("g:0:200000:65536", "no uid entries"),
    ] {
        let out = run(&mut idshift(&["mount", "-m", map, p, p]));
        assert_code(&out, 2);
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(missing) && err.contains("both a uid and a gid map"),
            "{err}"
        );
    }
}

/// The mount options of the mount at `dst`, from `/proc/self/mountinfo` (the top one).
fn mount_options(dst: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = text
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(dst.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mounted:\n{text}", dst.display()));
    line.split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Container root planted a setuid copy of `id` (owned by its host id 1000000 on disk); a map
/// that shows 1000000 as 0 shows it as setuid root. The mount is nosuid and nodev, and idshift
/// says why it matters; with --suid the bit works — and the warning is there.
fn mount_is_nosuid_unless_asked_and_warns_when_it_shows_setuid_root() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    let planted = src.join("id");
    std::fs::copy("/usr/bin/id", &planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(1000000), Some(1000000)).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let run_it = || {
        let out = run(std::process::Command::new("runuser")
            .args(["-u", &env.user().name, "--"])
            .arg(dst.join("id"))
            .arg("-u"));
        assert_code(&out, 0);
        stdout(&out).trim().to_string()
    };
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());

    let out = run(&mut idshift(&["mount", "-m", "b:1000000:0:65536", s, d]));
    let _guard = Mounted(dst.clone());
    let warning = assert_one_error_line(&out, 0, "idshift: warning:");
    assert!(
        warning.contains("setuid files owned by container root appear setuid root"),
        "{warning}"
    );
    assert!(warning.contains("nosuid"), "{warning}");
    let opts = mount_options(&dst);
    assert!(opts.iter().any(|o| o == "nosuid"), "{opts:?}");
    assert!(opts.iter().any(|o| o == "nodev"), "{opts:?}");
    assert!(opts.iter().any(|o| o == "idmapped"), "{opts:?}");
    assert_eq!(owner(&dst.join("id")), (0, 0));
    assert_eq!(
        run_it(),
        env.user().uid.to_string(),
        "the setuid bit worked"
    );
    assert_code(&run(&mut idshift(&["umount", d])), 0);

    let out = run(&mut idshift(&[
        "mount",
        "--suid",
        "-m",
        "b:1000000:0:65536",
        s,
        d,
    ]));
    let warning = assert_one_error_line(&out, 0, "idshift: warning:");
    assert!(warning.contains("--suid honours them"), "{warning}");
    let opts = mount_options(&dst);
    assert!(!opts.iter().any(|o| o == "nosuid"), "{opts:?}");
    assert!(opts.iter().any(|o| o == "nodev"), "{opts:?}");
    assert_eq!(run_it(), "0", "--suid: the setuid bit works");
    assert_code(&run(&mut idshift(&["umount", d])), 0);

    // A map that shows nothing as 0: nosuid still, and no warning.
    let out = run(&mut idshift(&["mount", "-m", "b:0:100000:65536", s, d]));
    assert_code(&out, 0);
    assert_eq!(stderr(&out), "");
    assert!(mount_options(&dst).iter().any(|o| o == "nosuid"));
    assert_code(&run(&mut idshift(&["umount", d])), 0);
}

/// An idmapped mount made the way LXC or Incus make theirs (the same three syscalls, a user
/// namespace of another process), not by `idshift mount`: `umount` refuses it (exit 3) and
/// leaves it; `--force` removes it.
fn umount_refuses_an_idmapped_mount_idshift_did_not_make() {
    let Some(_) = require!(Root) else { return };
    if !on_path("unshare") {
        skip("needs unshare(1)");
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    // A user namespace held by a sleeping process; its maps written from here.
    let mut holder = std::process::Command::new("unshare")
        .args(["--user", "sleep", "60"])
        .spawn()
        .unwrap();
    let pid = holder.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ns = format!("/proc/{pid}/ns/user");
    while std::fs::read_link(&ns).ok() == std::fs::read_link("/proc/self/ns/user").ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "unshare did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 100000 65536\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 100000 65536\n").unwrap();
    let userns = std::fs::File::open(&ns).unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let tree = idshift::sys::mount::open_tree_clone(&c(&src), false).unwrap();
    use std::os::fd::AsFd;
    idshift::sys::mount::set_idmap(
        tree.as_fd(),
        userns.as_fd(),
        false,
        idshift::sys::mount::Setuid::Ignored,
    )
    .unwrap();
    idshift::sys::mount::attach(tree.as_fd(), &c(&dst)).unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let _guard = Mounted(dst.clone());
    assert_eq!(
        owner(&dst),
        (100000, 100000),
        "the foreign mount is idmapped"
    );

    let d = dst.to_str().unwrap();
    let out = run(&mut idshift(&["umount", d]));
    let err = assert_one_error_line(&out, 3, "idshift did not make");
    assert!(err.contains("--force"), "{err}");
    assert!(mount_options(&dst).iter().any(|o| o == "idmapped"));
    let out = run(&mut idshift(&["umount", "--force", d]));
    assert_code(&out, 0);
    assert_eq!(owner(&dst), owner(tmp.path()), "the mount is gone");
}
