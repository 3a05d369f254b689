//! The container workflows on real LXC layouts: `migrate` (as root and unprivileged, killed at
//! every point and resumed, and its refusals), unprivileged `shift`, and `exec --rootfs`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::lxc::*;
use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(migrate_a_real_container_as_root, Need::Root, Need::Rootfs),
        trial!(
            unprivileged_migrate_between_the_users_two_ranges,
            Need::Root,
            Need::TestUser,
            Need::Rootfs
        ),
        trial!(
            unprivileged_refusals_change_nothing,
            Need::Root,
            Need::TestUser,
            Need::Rootfs
        ),
        trial!(
            unprivileged_shift_leaves_what_it_could_not_restore,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            migrate_killed_at_every_step_finishes_on_rerun,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            unprivileged_migrate_killed_midway_finishes_on_rerun,
            Need::Root,
            Need::TestUser,
            Need::Rootfs
        ),
        trial!(migrate_error_paths, Need::Root, Need::ScratchXattrs),
        trial!(
            migrate_idmapped_round_trip_boots_and_touches_no_inode_after_the_first,
            Need::Root,
            Need::Rootfs
        ),
        trial!(
            a_bind_mount_source_is_listed_and_shifted_with_mounts,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_map_kept_in_an_include_is_migrated_without_touching_it,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            default_conf_is_read_by_exec_ranges_and_migrate,
            Need::Root,
            Need::TestUser,
            Need::ScratchXattrs
        ),
        trial!(
            a_privileged_container_made_unprivileged_and_back_boots_each_time,
            Need::Root,
            Need::Rootfs
        ),
        trial!(
            status_exec_mount_and_shift_take_a_container_by_name,
            Need::Root,
            Need::Rootfs,
            Need::ScratchXattrs
        ),
        trial!(
            migrate_onto_a_range_another_container_uses_warns,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            migrate_refuses_a_running_container,
            Need::Root,
            Need::Rootfs,
            Need::Lxc
        ),
        trial!(
            exec_rootfs_fixes_up_a_stopped_container_unprivileged,
            Need::Root,
            Need::TestUser,
            Need::Rootfs
        ),
        trial!(
            exec_rootfs_forwards_signals_through_its_pid_1,
            Need::Root,
            Need::Rootfs
        ),
        trial!(
            a_real_lxc_container_running_then_migrated_and_started_again,
            Need::Root,
            Need::Rootfs,
            Need::Lxc
        ),
    ])
}

fn plus(delta: i64) -> impl Fn(IdKind, u32) -> Option<u32> {
    move |_, id| u32::try_from(i64::from(id) + delta).ok()
}

/// Inside the container's namespace, the files of `rootfs` owned by an unmapped id.
fn unmapped_files(c: &Container, user: Option<&TestUser>) -> String {
    let rootfs = c.rootfs.to_str().unwrap();
    let mut args = c.args(&["exec", "--container"]);
    args.extend([
        "--", "find", rootfs, "-xdev", "(", "-uid", "65534", "-o", "-gid", "65534", ")", "-print",
    ]);
    let out = match user {
        Some(u) => run(&mut idshift_as(u, &args)),
        None => run(&mut idshift(&args)),
    };
    assert_code(&out, 0);
    stdout(&out)
}

/// Sample ACLs and a capability of our own in a container rootfs at `base`, besides the ones
/// the packages set (ping's capability, the setuid files).
fn decorate(rootfs: &Path, base: u32) {
    let id = |x: u32| (x + base).to_le_bytes();
    let mut a = vec![2, 0, 0, 0];
    for (tag, perm, who) in [
        (1u16, 6u16, None),
        (2, 6, Some(1000)),
        (4, 4, None),
        (8, 4, Some(50)),
        (16, 6, None),
        (32, 0, None),
    ] {
        a.extend(tag.to_le_bytes());
        a.extend(perm.to_le_bytes());
        a.extend(who.map(id).unwrap_or([255; 4]));
    }
    set_xattr(&rootfs.join("etc/debian_version"), acl::ACCESS, &a);
    let mut cap = caps::decode(&CAP_NET_RAW_V2).unwrap().with_rootid(base);
    cap.rootid = base;
    set_xattr(
        &rootfs.join("usr/bin/dpkg"),
        caps::NAME,
        &caps::encode(&cap),
    );
}

fn migrate(c: &Container, user: Option<&TestUser>, extra: &[&str]) -> Output {
    let mut args = c.args(&["migrate"]);
    args.extend(extra);
    args.extend(["--progress", "never"]);
    match user {
        Some(u) => run(&mut idshift_as(u, &args)),
        None => run(&mut idshift(&args)),
    }
}

fn migrate_a_real_container_as_root() {
    let Some(_) = require!(Root) else { return };
    let Some(src) = test_rootfs() else { return };
    let c = container(&src, "c1", 100000, None);
    decorate(&c.rootfs, 100000);
    let before = snapshot(&c.rootfs);

    let out = migrate(&c, None, &["--to", "300000"]);
    assert_code(&out, 0);
    assert_shifted(&before, &snapshot(&c.rootfs), &plus(200000));
    // Only the two idmap lines changed, in place.
    assert_eq!(c.config_now(), config_text(&c.lxcpath, "c1", 300000));
    assert_eq!(unmapped_files(&c, None), "");
    let passwd = c.rootfs.join("usr/bin/passwd");
    let mut a = c.args(&["exec", "--container"]);
    a.extend(["--", "stat", "-c", "%u:%g %a", passwd.to_str().unwrap()]);
    let out = run(&mut idshift(&a));
    assert_eq!(stdout(&out), "0:0 4755\n");

    // The same migrate again changes nothing.
    let after = snapshot(&c.rootfs);
    let out = migrate(&c, None, &["--to", "300000"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("already names"), "{}", stdout(&out));
    assert_same_tree(&snapshot(&c.rootfs), &after, "the rootfs");

    // --to-map and --dry-run: nothing written.
    let out = migrate(&c, None, &["--to-map", "b:0:400000:65536", "--dry-run"]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("would name 'u:0:400000:65536 g:0:400000:65536'"),
        "{}",
        stdout(&out)
    );
    assert_same_tree(&snapshot(&c.rootfs), &after, "the rootfs");
    assert_eq!(c.config_now(), config_text(&c.lxcpath, "c1", 300000));
}

fn unprivileged_migrate_between_the_users_two_ranges() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let Some(src) = test_rootfs() else { return };
    let user = env.user();
    let c = container(&src, "c1", a, Some(user));
    decorate(&c.rootfs, a);
    let before = snapshot(&c.rootfs);

    let out = migrate(&c, Some(user), &["--to", &b.to_string()]);
    assert_code(&out, 0);
    let moved = snapshot(&c.rootfs);
    assert_shifted(&before, &moved, &plus(i64::from(b) - i64::from(a)));
    assert_eq!(c.config_now(), config_text(&c.lxcpath, "c1", b));
    assert_eq!(
        owner(&c.config),
        (user.uid, user.gid),
        "the config changed owner"
    );
    assert_eq!(unmapped_files(&c, Some(user)), "");

    // Back with --to auto: the user's first free block is A again; every byte as before
    // (but the atimes `find` just set).
    let out = migrate(&c, Some(user), &["--to", "auto"]);
    assert_code(&out, 0);
    assert_same_tree(
        &without_times_and_inodes(&snapshot(&c.rootfs)),
        &without_times_and_inodes(&before),
        "the rootfs",
    );
    assert_eq!(c.config_now(), config_text(&c.lxcpath, "c1", a));
}

fn unprivileged_refusals_change_nothing() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let Some(src) = test_rootfs() else { return };
    let user = env.user();
    let c = container(&src, "c1", a, Some(user));
    let before = snapshot(&c.rootfs);
    let config = c.config_now();
    // To the host view (a privileged container): host ids 0-65535 are never delegated.
    assert_one_error_line(
        &migrate(&c, Some(user), &["--to", "host"]),
        1,
        "never delegated: run it with sudo",
    );
    // A range the user does not own, as a target and as a source.
    let out = migrate(&c, Some(user), &["--to", "100000"]);
    assert_code(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("host uids 100000-165535 of the TO map") && err.contains("not delegated to"),
        "{err}"
    );
    let root = c.rootfs.to_str().unwrap();
    let out = run(&mut idshift_as(
        user,
        &[
            "shift",
            root,
            "--from",
            "b:0:100000:65536",
            "--to",
            &format!("b:0:{b}:65536"),
        ],
    ));
    assert_code(&out, 3);
    // The host view needs root.
    let out = run(&mut idshift_as(
        user,
        &["shift", root, &format!("b:0:{a}:65536"), "-r"],
    ));
    assert_code(&out, 3);
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));
    assert_same_tree(&snapshot(&c.rootfs), &before, "the rootfs");
    assert_eq!(c.config_now(), config);
}

// Inside the namespace a host-root (v2) capability or an ACL entry naming a foreign id could not
// be written back after the chown: those inodes are reported and left whole; root finishes them.
fn unprivileged_shift_leaves_what_it_could_not_restore() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let user = env.user();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = tmp.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    for f in ["plain", "hostcap", "foreignacl", "nscap", "hostowned"] {
        std::fs::write(root.join(f), f).unwrap();
    }
    let v3 = caps::encode(&caps::decode(&CAP_NET_RAW_V2).unwrap().with_rootid(a));
    set_xattr(&root.join("nscap"), caps::NAME, &v3);
    set_xattr(&root.join("foreignacl"), acl::ACCESS, &sample_acl()); // names 70000
    let out = run(&mut idshift(&[
        "shift",
        root.to_str().unwrap(),
        &format!("b:0:{a}:65536"),
        "--progress",
        "never",
    ]));
    assert_code(&out, 0);
    // After that shift, which made every capability the container's: one of host root's, and
    // a file owned by a host id outside the user's ranges.
    set_xattr(&root.join("hostcap"), caps::NAME, &CAP_NET_RAW_V2);
    std::os::unix::fs::lchown(root.join("hostowned"), Some(4242), Some(4242)).unwrap();
    std::os::unix::fs::chown(tmp.path(), Some(user.uid), Some(user.gid)).unwrap();
    let before = snapshot(&root);

    let args = [
        "shift",
        root.to_str().unwrap(),
        "--from",
        &format!("b:0:{a}:65536"),
        "--to",
        &format!("b:0:{b}:65536"),
        "--progress",
        "never",
    ];
    let out = run(&mut idshift_as(user, &args));
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("hostcap: keep xattrs: its file capability belongs to root id 0"),
        "{err}"
    );
    assert!(
        err.contains("foreignacl: keep xattrs: its ACL names uid -1 (unmapped)"),
        "{err}"
    );
    // Inside the namespace the foreign owner reads as the overflow id: said so, not passed off
    // as the owner.
    let text = stdout(&out);
    assert!(
        text.contains(
            "uid 65534 (the overflow id: its real owner is outside your delegated ranges)"
        ),
        "{text}"
    );
    let after = snapshot(&root);
    for f in ["hostcap", "foreignacl", "hostowned"] {
        assert_eq!(after[Path::new(f)], before[Path::new(f)], "{f} was touched");
    }
    assert_eq!(owner(&root.join("plain")), (b, b));
    let nscap = caps::decode(&get_xattr(&root.join("nscap"), caps::NAME).unwrap()).unwrap();
    assert_eq!(nscap.rootid, b);

    // Root runs the same shift: the user's journal is not root's to trust, so root refuses
    // (it may hold records root cannot use) until told to go on from what the inodes hold.
    let out = run(&mut idshift(&args));
    assert_one_error_line(&out, 3, "not by you (uid 0)");
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = run(&mut idshift(&forced));
    assert_code(&out, 0);
    assert!(stdout(&out).contains("uid 4242: 1"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not by you (uid 0)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(owner(&root.join("hostcap")), (b, b));
    assert_eq!(
        get_xattr(&root.join("hostcap"), caps::NAME).unwrap(),
        CAP_NET_RAW_V2.to_vec()
    );
    assert_eq!(owner(&root.join("foreignacl")), (b, b));
}

/// The invariant a killed migrate must keep: the config names the new map only if the rootfs
/// records it and no shift is pending.
fn config_is_honest(c: &Container, new_base: u32) {
    let names_new = c.config_now() == config_text(&c.lxcpath, &c.name, new_base);
    if names_new {
        let rec = get_xattr(&c.rootfs, c"user.idshift.map").unwrap_or_default();
        let rec = String::from_utf8_lossy(&rec);
        assert!(
            rec.starts_with(&format!("u:0:{new_base}:65536 g:0:{new_base}:65536\n")),
            "{rec}"
        );
        assert!(get_xattr(&c.rootfs, c"user.idshift.pending").is_none());
    }
}

fn killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(9) || out.status.code() == Some(128 + 9)
}

fn migrate_killed_at_every_step_finishes_on_rerun() {
    let Some(_) = require!(Root) else { return };
    let sample = tempfile::tempdir().unwrap();
    let src = sample.path().join("rootfs");
    build_sample(&src);
    let reference = {
        let c = container(&src, "c1", 100000, None);
        assert_code(&migrate(&c, None, &["--to", "200000"]), 0);
        without_times_and_inodes(&snapshot(&c.rootfs))
    };
    let mut step = 1;
    loop {
        let c = container(&src, "c1", 100000, None);
        let mut args = c.args(&["migrate"]);
        args.extend(["--to", "200000", "--progress", "never"]);
        let out = run(idshift(&args).env("IDSHIFT_CRASH_AFTER_STEPS", step.to_string()));
        if !killed(&out) {
            assert_code(&out, 0);
            assert!(step > 10, "only {step} kill points");
            break;
        }
        config_is_honest(&c, 200000);
        let again = migrate(&c, None, &["--to", "200000"]);
        assert_code(&again, 0);
        assert_same_tree(
            &without_times_and_inodes(&snapshot(&c.rootfs)),
            &reference,
            &format!("killed before step {step}"),
        );
        assert_eq!(
            c.config_now(),
            config_text(&c.lxcpath, "c1", 200000),
            "step {step}"
        );
        step += 1;
    }
}

fn unprivileged_migrate_killed_midway_finishes_on_rerun() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let Some(src) = test_rootfs() else { return };
    let user = env.user();
    let reference = {
        let c = container(&src, "c1", a, Some(user));
        assert_code(&migrate(&c, Some(user), &["--to", &b.to_string()]), 0);
        without_times_and_inodes(&snapshot(&c.rootfs))
    };
    for step in [1, 2, 3, 50, 2000, 6000] {
        let c = container(&src, "c1", a, Some(user));
        let mut args = c.args(&["migrate"]);
        args.extend(["--to", "auto", "--progress", "never"]);
        let mut cmd = idshift_as(user, &args);
        cmd.env("IDSHIFT_CRASH_AFTER_STEPS", step.to_string());
        let out = run(&mut cmd);
        assert!(
            killed(&out),
            "step {step}: {:?} {}",
            out.status,
            stderr(&out)
        );
        config_is_honest(&c, b);
        // `auto` resumes the interrupted target, not some other free block.
        let again = migrate(&c, Some(user), &["--to", "auto"]);
        assert_code(&again, 0);
        assert_same_tree(
            &without_times_and_inodes(&snapshot(&c.rootfs)),
            &reference,
            &format!("killed before step {step}"),
        );
        assert_eq!(c.config_now(), config_text(&c.lxcpath, "c1", b));
    }
}

fn migrate_error_paths() {
    let Some(_) = require!(Root) else { return };
    let sample = tempfile::tempdir().unwrap();
    let src = sample.path().join("rootfs");
    build_sample(&src);
    let c = container(&src, "c1", 100000, None);
    let lxcpath = c.lxcpath.to_str().unwrap();
    assert_one_error_line(
        &run(&mut idshift(&[
            "migrate", "nope", "-P", lxcpath, "--to", "200000",
        ])),
        2,
        "container 'nope' not found",
    );
    assert_one_error_line(
        &run(&mut idshift(&[
            "migrate", "c1", "-P", lxcpath, "--to", "x2",
        ])),
        2,
        "--to 'x2': expected a host id",
    );

    // A config without lxc.idmap (a privileged container): made unprivileged, in a dry run.
    std::fs::create_dir_all(c.lxcpath.join("priv/rootfs")).unwrap();
    std::fs::write(
        c.lxcpath.join("priv/config"),
        format!(
            "lxc.arch = linux64\nlxc.rootfs.path = dir:{}/priv/rootfs\n",
            c.lxcpath.display()
        ),
    )
    .unwrap();
    let out = run(&mut idshift(&[
        "migrate",
        "priv",
        "-P",
        lxcpath,
        "--to",
        "200000",
        "--dry-run",
    ]));
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("would name 'u:0:200000:65536 g:0:200000:65536' (now 'host')"),
        "{}",
        stdout(&out)
    );
    // A rootfs that is not there.
    std::fs::create_dir(c.lxcpath.join("gone")).unwrap();
    std::fs::write(
        c.lxcpath.join("gone/config"),
        config_text(&c.lxcpath, "gone", 100000),
    )
    .unwrap();
    assert_one_error_line(
        &run(&mut idshift(&[
            "migrate", "gone", "-P", lxcpath, "--to", "200000",
        ])),
        2,
        "rootfs",
    );
}

/// `--container NAME -P DIR` on status, exec --rootfs (no path), mount and shift: the rootfs
/// comes from the config, the map too; a path that is another container's rootfs is refused,
/// and what cannot be resolved is one line.
fn status_exec_mount_and_shift_take_a_container_by_name() {
    let Some(_) = require!(Root) else { return };
    let Some(src) = test_rootfs() else { return };
    let c = container(&src, "c1", 100000, None);
    let lxcpath = c.lxcpath.to_str().unwrap();
    let status = |extra: &[&str]| {
        let mut a = vec!["status", "--container", "c1", "-P", lxcpath, "--json"];
        a.extend_from_slice(extra);
        let out = run(&mut idshift(&a));
        assert_code(&out, 0);
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap()
    };
    let s = status(&[]);
    assert_eq!(s["dir"], c.rootfs.to_str().unwrap());
    assert_eq!(s["container"]["name"], "c1");
    assert_eq!(s["container"]["agrees"], true, "{s}");
    assert_eq!(
        s["outlier_inodes"], 0,
        "the configured map is the one checked: {s}"
    );

    // exec --rootfs without a path enters c1's rootfs with c1's map.
    let out = run(&mut idshift(&[
        "exec",
        "--container",
        "c1",
        "-P",
        lxcpath,
        "--rootfs",
        "--",
        "stat",
        "-c",
        "%u:%g %a",
        "/usr/bin/passwd",
    ]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "0:0 4755\n");
    // Another container's rootfs given with --container c2: refused, nothing run.
    let c2 = c.lxcpath.join("c2");
    std::fs::create_dir_all(c2.join("rootfs")).unwrap();
    std::fs::write(c2.join("config"), config_text(&c.lxcpath, "c2", 200000)).unwrap();
    let marker = c.lxcpath.join("ran");
    let touch = format!("touch {}", marker.display());
    let out = run(&mut idshift(&[
        "exec",
        "--container",
        "c2",
        "-P",
        lxcpath,
        "--rootfs",
        c.rootfs.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &touch,
    ]));
    assert_one_error_line(&out, 125, "is container 'c1''s rootfs, not 'c2''s");
    assert!(!marker.exists());
    // A storage backend idshift cannot walk is named.
    let c3 = c.lxcpath.join("c3");
    std::fs::create_dir_all(&c3).unwrap();
    std::fs::write(c3.join("config"), "lxc.rootfs.path = btrfs:/srv/c3\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n").unwrap();
    for cmd in ["status", "shift"] {
        let mut a = vec![cmd, "--container", "c3", "-P", lxcpath];
        if cmd == "shift" {
            a.extend(["--to", "host"]);
        }
        assert_one_error_line(&run(&mut idshift(&a)), 2, "btrfs backend");
    }
    assert_one_error_line(
        &run(&mut idshift(&[
            "status",
            "--container",
            "nope",
            "-P",
            lxcpath,
        ])),
        2,
        "container 'nope' not found",
    );

    // mount --container DST: the rootfs as c1 sees it.
    let dst = tempfile::tempdir().unwrap();
    let d = dst.path().to_str().unwrap();
    let out = run(&mut idshift(&[
        "mount",
        "--container",
        "c1",
        "-P",
        lxcpath,
        d,
    ]));
    assert_code(&out, 0);
    assert_eq!(owner(&dst.path().join("usr/bin/passwd")), (0, 0));
    assert_code(&run(&mut idshift(&["umount", d])), 0);

    // shift --container c1 --to host: the rootfs to the host view (the config is not changed,
    // so status says they disagree); --to-container c1 from the host view brings it back.
    let shift = |a: &[&str]| {
        let mut args = vec!["shift", "--progress", "never"];
        args.extend_from_slice(a);
        run(&mut idshift(&args))
    };
    assert_code(
        &shift(&["--container", "c1", "-P", lxcpath, "--to", "host"]),
        0,
    );
    assert_eq!(owner(&c.rootfs.join("usr/bin/passwd")), (0, 0));
    assert_eq!(status(&[])["container"]["agrees"], false);
    let rootfs = c.rootfs.to_str().unwrap();
    assert_code(&shift(&[rootfs, "--to-container", "c1", "-P", lxcpath]), 0);
    assert_eq!(owner(&c.rootfs.join("usr/bin/passwd")), (100000, 100000));
    assert_eq!(status(&[])["container"]["agrees"], true);
    assert_one_error_line(
        &shift(&[rootfs, "--from", "host", "--to", "host"]),
        2,
        "both the host view",
    );
    assert_one_error_line(
        &shift(&[
            rootfs,
            "--from",
            "host",
            "b:0:1:1",
            "--to-container",
            "c1",
            "-P",
            lxcpath,
        ]),
        2,
        "the host view takes no map entries",
    );
}

/// A container moved onto ids another container of the lxcpath uses would share its files:
/// said in one line, naming the other container, and the migrate goes on only as asked.
fn migrate_onto_a_range_another_container_uses_warns() {
    let Some(_) = require!(Root) else { return };
    let sample = tempfile::tempdir().unwrap();
    let src = sample.path().join("rootfs");
    build_sample(&src);
    let c = container(&src, "c1", 100000, None);
    let lxcpath = c.lxcpath.to_str().unwrap();
    // c2 only needs its config: its map is what counts.
    std::fs::create_dir(c.lxcpath.join("c2")).unwrap();
    std::fs::write(
        c.lxcpath.join("c2/config"),
        config_text(&c.lxcpath, "c2", 230000),
    )
    .unwrap();
    let out = run(&mut idshift(&[
        "migrate",
        "c1",
        "-P",
        lxcpath,
        "--to",
        "200000",
        "--dry-run",
    ]));
    assert_code(&out, 0);
    let err = stderr(&out);
    let warning: Vec<_> = err
        .lines()
        .filter(|l| l.contains("shares host ids"))
        .collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(warning[0].contains("container(s) c2"), "{err}");
    assert!(warning[0].contains("idshift ranges"), "{err}");
    // A free range: no word about it.
    let out = run(&mut idshift(&[
        "migrate",
        "c1",
        "-P",
        lxcpath,
        "--to",
        "400000",
        "--dry-run",
    ]));
    assert_code(&out, 0);
    assert!(
        !stderr(&out).contains("shares host ids"),
        "{}",
        stderr(&out)
    );
}

fn migrate_refuses_a_running_container() {
    let Some(_) = require!(Root) else { return };
    let Some(src) = test_rootfs() else { return };
    let c = container(&src, "c1", 100000, None);
    let lxcpath = c.lxcpath.to_str().unwrap();
    // The processes below read files in the rootfs (atimes): compare the rest.
    let before = without_times_and_inodes(&snapshot(&c.rootfs));
    let config = c.config_now();
    // A process with its root in the rootfs (as `lxc-start -F` leaves one)...
    let mut chrooted = Command::new("chroot")
        .arg(&c.rootfs)
        .args(["/bin/sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = run(&mut idshift(&[
        "migrate", "c1", "-P", lxcpath, "--to", "200000",
    ]));
    let _ = chrooted.kill();
    let _ = chrooted.wait();
    assert_one_error_line(&out, 3, "in use: process ");
    // ...and LXC's monitor process, whose title names the lxcpath and the container.
    let title = format!("[lxc monitor] {lxcpath} c1");
    let mut monitor = Command::new("bash")
        .args(["-c", &format!("exec -a '{title}' sleep 30")])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = run(&mut idshift(&[
        "migrate", "c1", "-P", lxcpath, "--to", "200000",
    ]));
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_one_error_line(
        &out,
        3,
        "in use: container 'c1' is running (its monitor process",
    );
    assert_same_tree(
        &without_times_and_inodes(&snapshot(&c.rootfs)),
        &before,
        "the rootfs",
    );
    assert_eq!(c.config_now(), config);
}

fn exec_rootfs_fixes_up_a_stopped_container_unprivileged() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, _) = env.user().ranges;
    let Some(src) = test_rootfs() else { return };
    let user = env.user();
    let c = container(&src, "c1", a, Some(user));
    let rootfs = c.rootfs.to_str().unwrap();
    let mut args = c.args(&["exec", "--container"]);
    args.extend([
        "--rootfs",
        rootfs,
        "--",
        "sh",
        "-c",
        "echo pid=$$ home=$HOME path=$PATH; id -u; dpkg -l | grep -c '^ii'; ls /proc | grep -c '^[0-9]'; \
         passwd -d root >/dev/null && useradd -m bob && echo hi > /root/note && head -c1 /dev/urandom | wc -c",
    ]);
    let out = run(&mut idshift_as(user, &args));
    assert_code(&out, 0);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines[0],
        "pid=2 home=/root path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(lines[1], "0");
    assert!(lines[2].parse::<u32>().unwrap() > 50, "dpkg -l: {lines:?}");
    assert!(
        lines[3].parse::<u32>().unwrap() < 10,
        "a fresh /proc shows only the namespace's processes: {lines:?}"
    );
    assert_eq!(lines[4], "1");
    // What the command wrote is owned by the container's ids on the host.
    assert_eq!(owner(&c.rootfs.join("home/bob")), (a + 1000, a + 1000));
    assert_eq!(owner(&c.rootfs.join("root/note")), (a, a));
    let shadow = std::fs::read_to_string(c.rootfs.join("etc/shadow")).unwrap();
    assert!(shadow.starts_with("root::"), "{shadow}");
    assert!(shadow.contains("\nbob:"), "{shadow}");
    let shadow_gid = std::fs::read_to_string(c.rootfs.join("etc/group"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("shadow:"))
        .unwrap()
        .split(':')
        .nth(2)
        .unwrap()
        .parse::<u32>()
        .unwrap();
    assert_eq!(owner(&c.rootfs.join("etc/shadow")), (a, a + shadow_gid));
    // Nothing was left mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(rootfs), "{mounts}");

    // The command's own status comes back; an unknown command is 127; a missing rootfs 125.
    let mut a = c.args(&["exec", "--container"]);
    a.extend(["--rootfs", rootfs, "--", "sh", "-c", "exit 7"]);
    assert_code(&run(&mut idshift_as(user, &a)), 7);
    let mut a = c.args(&["exec", "--container"]);
    a.extend(["--rootfs", rootfs, "--", "no-such-command"]);
    assert_code(&run(&mut idshift_as(user, &a)), 127);
    let missing = format!("{rootfs}-missing");
    let mut a = c.args(&["exec", "--container"]);
    a.extend(["--rootfs", missing.as_str(), "--", "true"]);
    let out = run(&mut idshift_as(user, &a));
    assert_code(&out, 125);
    assert!(stderr(&out).contains(&missing), "{}", stderr(&out));
}

fn exec_rootfs_forwards_signals_through_its_pid_1() {
    let Some(_) = require!(Root) else { return };
    let Some(src) = test_rootfs() else { return };
    let c = container(&src, "c1", 100000, None);
    let mut args = c.args(&["exec", "--container"]);
    args.extend(["--rootfs", c.rootfs.to_str().unwrap(), "--", "sleep", "60"]);
    let start = std::time::Instant::now();
    let child = idshift(&args).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 128 + 15);
    assert!(
        start.elapsed().as_secs() < 30,
        "the signal did not reach the command"
    );
}

/// The container as LXC really runs it: refused while running (lxc-info and the monitor process
/// say so), migrated once stopped, and after migrating back it starts again and its files are
/// root's inside.
fn a_real_lxc_container_running_then_migrated_and_started_again() {
    let Some(_) = require!(Root) else { return };
    let (c, base) = root_container("r1");
    // Where root moves it while stopped: any range clear of BASE (root may use any).
    let to = base + 3 * 65536;
    // No network (the test machine may have no lxcbr0) and an init that just waits.
    let config = c.config_now();
    std::fs::write(&c.config, &config).unwrap();
    let log = c.tmp.path().join("lxc.log");
    let start = |c: &Container| {
        lxc(
            "lxc-start",
            c,
            &["-d", "-l", "INFO", "-o", log.to_str().unwrap()],
        )
    };
    let out = start(&c);
    if out.status.code() != Some(0) {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(3)
            .collect();
        skip(format!(
            "this machine cannot start LXC containers: {errors:?}"
        ));
    }
    let started = Started(&c);
    assert_eq!(
        stdout(&lxc("lxc-info", &c, &["-s", "-H"])).trim(),
        "RUNNING"
    );

    let before = without_times_and_inodes(&snapshot(&c.rootfs));
    let out = migrate(&c, None, &["--to", &to.to_string()]);
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains("container 'r1' is running (lxc-info says RUNNING)"),
        "{}",
        stderr(&out)
    );
    assert_same_tree(
        &without_times_and_inodes(&snapshot(&c.rootfs)),
        &before,
        "the rootfs",
    );
    assert_eq!(c.config_now(), config);

    drop(started);
    assert_eq!(
        stdout(&lxc("lxc-info", &c, &["-s", "-H"])).trim(),
        "STOPPED"
    );
    assert_code(&migrate(&c, None, &["--to", &to.to_string()]), 0);
    assert_eq!(owner(&c.rootfs.join("usr/bin/passwd")), (to, to));
    assert_code(&migrate(&c, None, &["--to", &base.to_string()]), 0);
    assert_eq!(c.config_now(), config);

    assert_code(&start(&c), 0);
    let _started = Started(&c);
    let out = lxc(
        "lxc-attach",
        &c,
        &["--", "stat", "-c", "%u:%g %a", "/usr/bin/passwd"],
    );
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "0:0 4755\n");
}

/// The most common reason to chown a rootfs: a privileged container (no lxc.idmap, rootfs owned
/// by host root) made unprivileged by `migrate --to BASE`, started, then made privileged again
/// by `migrate --to host` and started again; inside, `passwd` is root's and setuid each time.
fn a_privileged_container_made_unprivileged_and_back_boots_each_time() {
    let Some(_) = require!(Root) else { return };
    let (c, base) = root_container("p1");
    let rootfs = c.rootfs.to_str().unwrap();
    let map = format!("b:0:{base}:65536");
    assert_code(
        &run(&mut idshift(&[
            "shift",
            "-r",
            rootfs,
            &map,
            "--progress",
            "never",
        ])),
        0,
    );
    // The privileged config: no lxc.idmap lines (and no network, an init that just waits).
    let privileged = c
        .config_now()
        .replace(
            &format!("lxc.idmap = u 0 {base} 65536\nlxc.idmap = g 0 {base} 65536\n"),
            "",
        )
        .replace("lxc.include = /usr/share/lxc/config/userns.conf\n", "");
    let privileged = startable(&privileged);
    assert!(!privileged.contains("lxc.idmap"));
    std::fs::write(&c.config, &privileged).unwrap();
    boots_with_passwd_root_setuid(&c);

    // Privileged -> unprivileged: the rootfs shifted from the host view, the lines added.
    let out = migrate(&c, None, &["--to", &base.to_string()]);
    assert_code(&out, 0);
    assert_eq!(owner(&c.rootfs.join("usr/bin/passwd")), (base, base));
    let unprivileged = c.config_now();
    assert!(
        unprivileged.contains(&format!(
            "lxc.idmap = u 0 {base} 65536\nlxc.idmap = g 0 {base} 65536\n"
        )),
        "{unprivileged}"
    );
    assert_eq!(
        unprivileged.replace(
            &format!("lxc.idmap = u 0 {base} 65536\nlxc.idmap = g 0 {base} 65536\n"),
            ""
        ),
        privileged
    );
    boots_with_passwd_root_setuid(&c);

    // And back: the rootfs in the host view, the lines gone, every other line as it was.
    let out = migrate(&c, None, &["--to", "host"]);
    assert_code(&out, 0);
    assert_eq!(owner(&c.rootfs.join("usr/bin/passwd")), (0, 0));
    assert_eq!(c.config_now(), privileged);
    boots_with_passwd_root_setuid(&c);
    let out = migrate(&c, None, &["--to", "host"]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("already names 'host'"),
        "{}",
        stdout(&out)
    );
}

/// `~/.config/lxc/default.conf`, where new containers get their map: `exec --default` runs with
/// it, `ranges` shows it, and `migrate` warns when its target is the range it gives new
/// containers. As the test user, with HOME pointing at a scratch home.
fn default_conf_is_read_by_exec_ranges_and_migrate() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let user = env.user();
    let (a, b) = user.ranges;
    let sample = tempfile::tempdir().unwrap();
    let src = sample.path().join("rootfs");
    build_sample(&src);
    let c = container(&src, "c1", a, Some(user));
    let home = c.tmp.path().join("home");
    let conf_dir = home.join(".config/lxc");
    std::fs::create_dir_all(&conf_dir).unwrap();
    for p in [&home, &home.join(".config"), &conf_dir] {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).unwrap();
    }
    let as_user = |args: &[&str]| {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", &user.name, "--", "env"])
            .arg(format!("HOME={}", home.display()))
            .arg(public_bin())
            .args(args)
            .current_dir("/");
        run(&mut cmd)
    };
    // No default.conf yet: one line, exit 125, nothing run.
    assert_one_error_line(
        &as_user(&["exec", "--default", "--", "true"]),
        125,
        "--default: ",
    );
    std::fs::write(
        conf_dir.join("default.conf"),
        format!("lxc.net.0.type = empty\nlxc.idmap = u 0 {b} 65536\nlxc.idmap = g 0 {b} 65536\n"),
    )
    .unwrap();
    let out = as_user(&["exec", "--default", "--", "cat", "/proc/self/uid_map"]);
    assert_code(&out, 0);
    let fields: Vec<String> = stdout(&out)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(fields, ["0", &b.to_string(), "65536"]);
    let out = as_user(&["ranges", "-P", c.lxcpath.to_str().unwrap()]);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains(&format!("default.conf): u:0:{b}:65536 g:0:{b}:65536")),
        "{}",
        stdout(&out)
    );
    // Migrating c1 into the range new containers get: warned, once, naming default.conf.
    let lxcpath = c.lxcpath.to_str().unwrap();
    let out = as_user(&[
        "migrate",
        "c1",
        "-P",
        lxcpath,
        "--to",
        &b.to_string(),
        "--dry-run",
    ]);
    // 1: the sample's outliers, which an unprivileged shift cannot reach, are listed.
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let err = stderr(&out);
    let warning: Vec<_> = err
        .lines()
        .filter(|l| l.contains("gives new containers"))
        .collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(warning[0].contains("default.conf"), "{err}");
}

/// LXC reads `lxc.include`d files in place; a map kept in one (often shared by many containers)
/// is read, and migrate overrides it in the container's own config, never editing the include.
/// Configs are read as LXC reads them: a Latin-1 byte is fine, `/dev/zero` is refused at once.
fn a_map_kept_in_an_include_is_migrated_without_touching_it() {
    let Some(_) = require!(Root) else { return };
    let sample = tempfile::tempdir().unwrap();
    let src = sample.path().join("rootfs");
    build_sample(&src);
    let c = container(&src, "c1", 100000, None);
    let lxcpath = c.lxcpath.to_str().unwrap();
    let shared = c.lxcpath.join("shared-idmap.conf");
    let include = b"# caf\xe9: shared by every container of the team\n\
                    lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n";
    std::fs::write(&shared, include).unwrap();
    let own = c.config_now().replace(
        "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n",
        &format!("lxc.include = {}\n", shared.display()),
    );
    assert!(!own.contains("lxc.idmap"));
    std::fs::write(&c.config, &own).unwrap();
    let uid_map = || {
        let out = run(&mut idshift(&[
            "exec",
            "--container",
            "c1",
            "-P",
            lxcpath,
            "--",
            "cat",
            "/proc/self/uid_map",
        ]));
        assert_code(&out, 0);
        stdout(&out)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(uid_map(), ["0", "100000", "65536"]);
    let out = migrate(&c, None, &["--to", "200000"]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    assert_eq!(owner(&c.rootfs), (200000, 200000));
    assert_eq!(
        std::fs::read(&shared).unwrap(),
        include,
        "the include was edited"
    );
    assert_eq!(uid_map(), ["0", "200000", "65536"]);
    let now = c.config_now();
    assert!(now.starts_with(&own), "the own lines were not kept: {now}");
    assert!(
        now.ends_with("lxc.idmap =\nlxc.idmap = u 0 200000 65536\nlxc.idmap = g 0 200000 65536\n"),
        "{now}"
    );

    // A Latin-1 byte in a config given by path; /dev/zero refused at once, in one line.
    let latin1 = c.tmp.path().join("latin1.conf");
    std::fs::write(
        &latin1,
        b"# \xe9t\xe9\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n",
    )
    .unwrap();
    let out = run(&mut idshift(&[
        "exec",
        "--lxc-config",
        latin1.to_str().unwrap(),
        "--",
        "true",
    ]));
    assert_code(&out, 0);
    let out = run_limited(
        &mut idshift(&["exec", "--lxc-config", "/dev/zero", "--", "true"]),
        std::time::Duration::from_secs(10),
    )
    .expect("idshift read /dev/zero for 10 seconds");
    assert_one_error_line(&out, 125, "/dev/zero: not a regular file");
}

/// A directory the container bind-mounts (lxc.mount.entry … bind) owned by its old range: a
/// migrate names it and leaves it; with --with-mounts it is shifted with the rootfs, before the
/// config; one that another container also mounts is refused with --with-mounts.
fn a_bind_mount_source_is_listed_and_shifted_with_mounts() {
    let Some(_) = require!(Root) else { return };
    let sample = tempfile::tempdir().unwrap();
    let src = sample.path().join("rootfs");
    build_sample(&src);
    let c = container(&src, "c1", 100000, None);
    let data = c.tmp.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("sub/file"), "x").unwrap();
    let d = data.to_str().unwrap();
    assert_code(
        &run(&mut idshift(&[
            "shift",
            d,
            "b:0:100000:65536",
            "--progress",
            "never",
        ])),
        0,
    );
    let entry = format!("lxc.mount.entry = {d} srv/data none bind,create=dir 0 0\n");
    std::fs::write(&c.config, c.config_now() + &entry).unwrap();

    // Without --with-mounts: named, left alone.
    let out = migrate(&c, None, &["--to", "200000"]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let warned: Vec<_> = stderr(&out)
        .lines()
        .filter(|l| l.contains("bind-mount source") && l.contains("--with-mounts"))
        .map(str::to_string)
        .collect();
    assert_eq!(warned.len(), 1, "{}", stderr(&out));
    assert_eq!(owner(&data.join("sub/file")), (100000, 100000));

    // The user moves the source along by hand; now it is in the old range again.
    assert_code(
        &run(&mut idshift(&[
            "shift",
            d,
            "--from",
            "b:0:100000:65536",
            "--to",
            "b:0:200000:65536",
            "--progress",
            "never",
        ])),
        0,
    );
    // Shared with another container: refused with --with-mounts, nothing changed.
    std::fs::create_dir_all(c.lxcpath.join("c2/rootfs")).unwrap();
    std::fs::write(
        c.lxcpath.join("c2/config"),
        config_text(&c.lxcpath, "c2", 700000) + &entry,
    )
    .unwrap();
    let out = migrate(&c, None, &["--to", "300000", "--with-mounts"]);
    assert_one_error_line(&out, 3, "also mounted by container(s) c2");
    assert_eq!(owner(&c.rootfs), (200000, 200000));
    assert_eq!(owner(&data.join("sub/file")), (200000, 200000));
    std::fs::remove_dir_all(c.lxcpath.join("c2")).unwrap();

    // Alone again: --with-mounts moves the rootfs and the source, then the config.
    let out = migrate(&c, None, &["--to", "400000", "--with-mounts"]);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    assert_eq!(owner(&c.rootfs), (400000, 400000));
    assert_eq!(owner(&data.join("sub/file")), (400000, 400000));
    assert!(c.config_now().contains("lxc.idmap = u 0 400000 65536"));
}

/// `migrate --idmapped`: the rootfs goes to the host view once and LXC idmaps it
/// (`idmap=container`); the container boots and sees passwd as root's and setuid. A second
/// migrate rewrites the config only (no inode's ctime moves); `--no-idmapped` gives back a
/// shifted rootfs that boots without the option.
fn migrate_idmapped_round_trip_boots_and_touches_no_inode_after_the_first() {
    use std::os::unix::fs::MetadataExt;
    let Some(_) = require!(Root) else { return };
    let (c, base) = root_container("im1");
    let passwd = c.rootfs.join("usr/bin/passwd");

    let out = migrate(&c, None, &["--to", &base.to_string(), "--idmapped"]);
    assert_code(&out, 0);
    assert_eq!(owner(&passwd), (0, 0), "the rootfs is in the host view");
    let now = c.config_now();
    assert!(
        now.contains("lxc.rootfs.options = idmap=container"),
        "{now}"
    );
    assert!(
        now.contains(&format!("lxc.idmap = u 0 {base} 65536")),
        "{now}"
    );
    let dir_mode = std::fs::metadata(c.lxcpath.join("im1")).unwrap().mode();
    assert_eq!(
        dir_mode & 0o001,
        0,
        "others may not reach a host-view rootfs"
    );
    boots_with_passwd_root_setuid(&c);

    // Moved elsewhere and back: the config only; no inode changes.
    let ctimes = |paths: &[&str]| -> Vec<i64> {
        paths
            .iter()
            .map(|p| {
                std::fs::symlink_metadata(c.rootfs.join(p))
                    .unwrap()
                    .ctime_nsec()
            })
            .collect()
    };
    let sample = ["usr/bin/passwd", "etc/passwd", "usr", "bin", ""];
    let before = ctimes(&sample);
    let to = base + 3 * 65536;
    let out = migrate(&c, None, &["--to", &to.to_string()]);
    assert_code(&out, 0);
    assert!(c
        .config_now()
        .contains(&format!("lxc.idmap = u 0 {to} 65536")));
    assert!(c.config_now().contains("idmap=container"));
    assert_code(&migrate(&c, None, &["--to", &base.to_string()]), 0);
    assert_eq!(
        ctimes(&sample),
        before,
        "a migrate of an idmapped container changed inodes"
    );
    assert_eq!(owner(&passwd), (0, 0));
    boots_with_passwd_root_setuid(&c);

    // Back to a shifted rootfs: the option is gone, and it boots without it.
    let out = migrate(&c, None, &["--to", &base.to_string(), "--no-idmapped"]);
    assert_code(&out, 0);
    assert_eq!(owner(&passwd), (base, base));
    assert!(
        !c.config_now().contains("idmap=container"),
        "{}",
        c.config_now()
    );
    boots_with_passwd_root_setuid(&c);
}
