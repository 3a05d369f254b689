//! Root acting on a container another user controls is not steered by what that user wrote:
//! a config naming host id 0 or ranges not delegated to the user, a rootfs outside the
//! container's directory, a symlink of the user's on the way. `--force` overrides.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::PathBuf;

use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(
            root_migrate_of_a_users_config_naming_host_root_and_a_host_directory_is_refused,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            root_migrate_to_ranges_not_delegated_or_a_rootfs_elsewhere_is_refused_unless_forced,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            a_symlink_of_the_users_on_the_way_is_refused,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            root_mount_of_a_users_tree_showing_host_root_is_refused,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            a_users_config_naming_dev_zero_or_a_fifo_is_not_read,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            paths_owned_by_the_users_subordinate_ids_are_still_the_users,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            root_exec_rootfs_with_a_users_map_file_is_checked_too,
            Need::Root,
            Need::TestUser
        ),
    ])
}

/// A user-owned LXCPATH with container `c` whose config has `map_base` as its container root
/// and `rootfs` as its rootfs; plus a root-owned "host directory" with a few files.
struct Setup {
    _tmp: tempfile::TempDir,
    lxcpath: PathBuf,
    host_dir: PathBuf,
}

fn setup(user: &TestUser, map_base: u32, rootfs: Option<&str>) -> Setup {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let host_dir = tmp.path().join("host-etc");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::write(host_dir.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(host_dir.join("shadow"), "root:*:1::::::\n").unwrap();
    let lxcpath = tmp.path().join("lxc");
    let dir = lxcpath.join("c");
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    let rootfs = rootfs
        .map(str::to_string)
        .unwrap_or_else(|| format!("dir:{}", host_dir.display()));
    std::fs::write(
        dir.join("config"),
        format!(
            "lxc.idmap = u 0 {map_base} 65536\nlxc.idmap = g 0 {map_base} 65536\n\
             lxc.rootfs.path = {rootfs}\n"
        ),
    )
    .unwrap();
    for p in [&lxcpath, &dir, &dir.join("config")] {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).unwrap();
    }
    Setup {
        _tmp: tmp,
        lxcpath,
        host_dir,
    }
}

fn migrate(s: &Setup, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "migrate",
        "c",
        "-P",
        s.lxcpath.to_str().unwrap(),
        "--progress",
        "never",
    ];
    args.extend(extra);
    // Under timeout(1): a config that made idshift block (a FIFO) must not hang the test.
    run(std::process::Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(bin())
        .args(&args))
}

// The attack: `lxc.idmap = u 0 0 65536` + `lxc.rootfs.path = dir:/etc` in a user's
// config, then root's migrate.
fn root_migrate_of_a_users_config_naming_host_root_and_a_host_directory_is_refused() {
    let Some(env) = require!(TestUser) else {
        return;
    };

    let s = setup(env.user(), 0, None);
    let before = snapshot(&s.host_dir);
    let out = migrate(&s, &["--to", "1300000"]);
    let err = assert_one_error_line(&out, 3, "belongs to idshift-test");
    assert!(err.contains("onto host uid 0"), "{err}");
    assert!(err.contains("lies outside"), "{err}");
    assert_eq!(
        snapshot(&s.host_dir),
        before,
        "the host directory was touched"
    );
    // The same maps through `shift --from-container`.
    let out = run(&mut idshift(&[
        "shift",
        s.host_dir.to_str().unwrap(),
        "--from-container",
        "c",
        "-P",
        s.lxcpath.to_str().unwrap(),
        "--to",
        "b:0:1300000:65536",
        "--progress",
        "never",
    ]));
    assert_one_error_line(&out, 3, "onto host uid 0");
    assert_eq!(snapshot(&s.host_dir), before);
}

fn root_migrate_to_ranges_not_delegated_or_a_rootfs_elsewhere_is_refused_unless_forced() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    // The map is the user's own range, but TO is not theirs.
    let s = setup(env.user(), a, Some("dir:ROOTFS"));
    let rootfs = s.lxcpath.join("c/rootfs");
    let config = s.lxcpath.join("c/config");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("ROOTFS", rootfs.to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    std::fs::write(rootfs.join("f"), "x").unwrap();
    std::os::unix::fs::lchown(rootfs.join("f"), Some(a), Some(a)).unwrap();
    let out = migrate(&s, &["--to", "1300000"]);
    let err = assert_one_error_line(&out, 3, "not delegated to idshift-test");
    assert!(err.contains("1300000"), "{err}");
    assert_eq!(owner(&rootfs.join("f")), (a, a));
    // Within the user's delegation (their second range), root may act for them.
    let out = migrate(&s, &["--to", &b.to_string()]);
    assert_code(&out, 0);
    assert_eq!(owner(&rootfs.join("f")), (b, b));
    // A rootfs outside the container's directory: refused, then forced (said so).
    let outside = setup(env.user(), a, None);
    let before = snapshot(&outside.host_dir);
    let out = migrate(&outside, &["--to", &b.to_string()]);
    assert_one_error_line(&out, 3, "lies outside");
    assert_eq!(snapshot(&outside.host_dir), before);
    let out = migrate(&outside, &["--to", &b.to_string(), "--force"]);
    assert_code(&out, 0);
    assert!(
        stderr(&out).contains("--force: acting as root on container 'c'"),
        "{}",
        stderr(&out)
    );
}

fn a_symlink_of_the_users_on_the_way_is_refused() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let s = setup(env.user(), a, None);
    // The container directory is a symlink the user made, to a directory root owns.
    let real = s.lxcpath.parent().unwrap().join("real-c");
    std::fs::rename(s.lxcpath.join("c"), &real).unwrap();
    symlink(&real, s.lxcpath.join("c")).unwrap();
    std::os::unix::fs::lchown(
        s.lxcpath.join("c"),
        Some(env.user().uid),
        Some(env.user().gid),
    )
    .unwrap();
    let before = snapshot(&s.host_dir);
    let out = migrate(&s, &["--to", &b.to_string()]);
    assert_one_error_line(&out, 3, "a symlink idshift-test controls");
    assert_eq!(snapshot(&s.host_dir), before);
}

// `mount` runs the same check: a user's tree shown with its ids as host root is refused.
fn root_mount_of_a_users_tree_showing_host_root_is_refused() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, _) = env.user().ranges;
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::chown(&src, Some(env.user().uid), Some(env.user().gid)).unwrap();
    let out = run(&mut idshift(&[
        "mount",
        "-m",
        &format!("b:{a}:0:65536"),
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]));
    let err = assert_one_error_line(&out, 3, "belongs to idshift-test");
    assert!(err.contains("onto host uid 0"), "{err}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(dst.to_str().unwrap()), "mounted anyway");
}

// A user's config that is a symlink to /dev/zero (or a FIFO) is not read: root's migrate ends
// at once with one line, instead of eating memory or hanging.
fn a_users_config_naming_dev_zero_or_a_fifo_is_not_read() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let s = setup(env.user(), a, None);
    let config = s.lxcpath.join("c/config");
    std::fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    let started = std::time::Instant::now();
    let out = migrate(&s, &["--to", &b.to_string()]);
    assert_one_error_line(&out, 2, "not a regular file");
    std::fs::remove_file(&config).unwrap();
    nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let out = migrate(&s, &["--to", &b.to_string()]);
    assert_one_error_line(&out, 2, "not a regular file");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

// The user hands their lxcpath, container directory and config to one of their subordinate
// ids (as container root can): still theirs, still checked.
fn paths_owned_by_the_users_subordinate_ids_are_still_the_users() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let s = setup(env.user(), 0, None);
    for p in [
        s.lxcpath.clone(),
        s.lxcpath.join("c"),
        s.lxcpath.join("c/config"),
    ] {
        std::os::unix::fs::chown(&p, Some(a), Some(a)).unwrap();
    }
    let before = snapshot(&s.host_dir);
    let out = migrate(&s, &["--to", &b.to_string()]);
    let err = assert_one_error_line(&out, 3, "belongs to idshift-test");
    assert!(err.contains("onto host uid 0"), "{err}");
    assert_eq!(snapshot(&s.host_dir), before);
}

// `exec --lxc-config FILE --rootfs DIR` (and -m) as root: the same check as --container.
fn root_exec_rootfs_with_a_users_map_file_is_checked_too() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, _) = env.user().ranges;
    let s = setup(env.user(), 0, None);
    let rootfs = s.lxcpath.join("c/rootfs");
    std::os::unix::fs::chown(&rootfs, Some(a), Some(a)).unwrap();
    let marker = rootfs.join("ran");
    let out = run(std::process::Command::new("timeout")
        .args(["-s", "KILL", "60"])
        .arg(bin())
        .arg("exec")
        .arg("--lxc-config")
        .arg(s.lxcpath.join("c/config"))
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["--", "/bin/sh", "-c", "touch /ran"]));
    let err = assert_one_error_line(&out, 125, "belongs to idshift-test");
    assert!(err.contains("onto host uid 0"), "{err}");
    assert!(!marker.exists());
}
