//! `idshift shift` and `idshift status` on real trees, as root: each of the properties the
//! shift must keep has a test here that fails when it is lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(
            shift_into_a_container_range_keeps_everything_else,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            reverse_and_round_trips_restore_bytes,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            hardlinks_shift_once_with_overlapping_ranges,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(symlinks_are_never_followed, Need::Root, Need::ScratchXattrs),
        trial!(
            swapping_a_directory_for_a_symlink_mid_walk_cannot_escape,
            Need::Root
        ),
        trial!(paths_longer_than_path_max, Need::Root),
        trial!(a_huge_flat_directory_is_shifted_whole_in_chunks, Need::Root),
        trial!(
            stays_on_its_mount_unless_told,
            Need::Root,
            Need::ScratchXattrs,
            Need::Tmpfs
        ),
        trial!(
            immutable_file_is_reported_and_a_rerun_finishes,
            Need::Root,
            Need::ScratchXattrs,
            Need::ScratchImmutable,
            Need::Tool("chattr")
        ),
        trial!(
            dry_run_and_strict_change_nothing,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            recorded_map_makes_a_second_shift_a_noop_and_refuses_a_wrong_from,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            parallel_and_single_threaded_agree,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            crash_at_every_step_then_rerun_matches_uninterrupted,
            Need::Root
        ),
        trial!(crash_at_every_step_with_overlapping_ranges, Need::Root),
        trial!(
            status_reports_blocks_map_caps_acls_and_outliers,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            bad_input_is_one_line_and_a_usage_status,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(maps_from_lxc_containers, Need::Root, Need::ScratchXattrs),
        trial!(interrupted_shift_says_how_to_finish_it, Need::Root),
    ])
}

fn shift_args(dir: &Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["shift".to_string(), dir.display().to_string()];
    v.extend(rest.iter().map(|s| s.to_string()));
    v.extend(["--progress".into(), "never".into()]);
    v
}

fn shift(dir: &Path, rest: &[&str]) -> Output {
    let args = shift_args(dir, rest);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&mut idshift(&args))
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", stdout(out), stderr(out)))
}

// 1, 2, 3, 4, 5, 9: every inode kind shifted by the map, modes, capabilities, ACLs, other
// xattrs, times and inode numbers kept, outliers left; nothing created or deleted.
fn shift_into_a_container_range_keeps_everything_else() {
    let Some(_) = require!(Root) else { return };
    let (tmp, root) = sample();
    let before = snapshot(&root);
    let out = shift(&root, &["b:0:100000:65536", "--json"]);
    assert_code(&out, 0);
    let after = snapshot(&root);
    assert_shifted(&before, &after, &plus(100000));
    // Spot checks of what assert_shifted derives.
    assert_eq!(after[Path::new("bin/su")].mode, 0o4755);
    assert_eq!(after[Path::new("bin/both")].mode, 0o6755);
    assert_eq!(after[Path::new("srv")].mode, 0o2775);
    assert_eq!(after[Path::new("home/locked")].mode, 0o000);
    assert_eq!(after[Path::new("etc/rel-link")].uid, 101000);
    let ping = &after[Path::new("usr/bin/ping")].xattrs["security.capability"];
    assert_eq!(caps::decode(ping).unwrap().rootid, 100000);
    assert_eq!(ping.len(), 24, "written as v3");
    let acl = acl::decode(&after[Path::new("etc/acl")].xattrs["system.posix_acl_access"]).unwrap();
    let ids: Vec<u32> = acl
        .iter()
        .filter(|e| e.tag == acl::TAG_USER || e.tag == acl::TAG_GROUP)
        .map(|e| e.id)
        .collect();
    assert_eq!(
        ids,
        vec![101000, 70000, 100050],
        "70000 is outside the map and stays"
    );
    assert_eq!(after[Path::new("opt/outlier")].uid, 70000);
    assert_eq!(
        (
            after[Path::new("opt/half")].uid,
            after[Path::new("opt/half")].gid
        ),
        (65536, 100010)
    );
    // The summary lists the outliers and counts the work.
    let s = json(&out);
    assert_eq!(s["schema"], 2);
    assert_eq!(s["from"]["host_view"], true);
    assert_eq!(s["from"]["uid"], serde_json::json!([]));
    assert_eq!(s["to"]["text"], "u:0:100000:65536 g:0:100000:65536");
    assert_eq!(
        s["to"]["gid"],
        serde_json::json!([{"inside": 0, "host": 100000, "count": 65536}])
    );
    assert_eq!(s["outlier_inodes"], 2);
    assert_eq!(s["acl_outlier_entries"], 1);
    let listed: Vec<String> = s["outliers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| format!("{} {}", o["kind"].as_str().unwrap(), o["id"]))
        .collect();
    assert!(listed.contains(&"uid 70000".to_string()), "{listed:?}");
    assert!(listed.contains(&"uid 65536".to_string()), "{listed:?}");
    assert_eq!(s["modes_restored"], 4, "su, wall, both, suidcap");
    assert_eq!(s["caps_rewritten"], 2);
    assert_eq!(s["hardlinks_skipped"], 2);
    // Nothing left beside the tree; the map is recorded on it.
    assert!(!journal_of(&root).exists());
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "only the tree itself");
    assert_eq!(
        get_xattr(&tmp.path().join("rootfs"), c"user.idshift.map")
            .map(|v| String::from_utf8(v).unwrap()),
        Some(format!(
            "u:0:100000:65536 g:0:100000:65536\ninodes {}\n",
            before.len()
        ))
    );
}

// 11: reverse restores every inode's metadata byte for byte, capabilities as v2 again.
fn reverse_and_round_trips_restore_bytes() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    let before = snapshot(&root);
    assert_code(&shift(&root, &["b:0:100000:65536"]), 0);
    assert_code(
        &shift(
            &root,
            &[
                "--from",
                "b:0:100000:65536",
                "--to",
                "u:0:300000:65536",
                "g:0:400000:65536",
            ],
        ),
        0,
    );
    let mid = snapshot(&root);
    assert_eq!(mid[Path::new("bin/wall")].gid, 400005);
    assert_eq!(
        caps::decode(&mid[Path::new("usr/bin/ping")].xattrs["security.capability"])
            .unwrap()
            .rootid,
        300000
    );
    assert_code(
        &shift(&root, &["-r", "u:0:300000:65536", "g:0:400000:65536"]),
        0,
    );
    let back = snapshot(&root);
    assert_eq!(back, before);
    assert_eq!(
        back[Path::new("usr/bin/ping")].xattrs["security.capability"],
        CAP_NET_RAW_V2.to_vec()
    );
}

// 6: a hardlinked inode is shifted once, also when FROM and TO host ranges overlap.
fn hardlinks_shift_once_with_overlapping_ranges() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    assert_code(&shift(&root, &["b:0:100000:65536"]), 0);
    let before = snapshot(&root);
    let out = shift(
        &root,
        &["--from", "b:0:100000:65536", "--to", "b:0:100500:65536"],
    );
    assert_code(&out, 0);
    let after = snapshot(&root);
    let map = |_, id: u32| (100000..165536).contains(&id).then_some(id + 500);
    assert_shifted(&before, &after, &map);
    for p in ["etc/hard", "var/hard2", "home/user/hard3"] {
        assert_eq!(after[Path::new(p)].uid, 101500, "{p}");
    }
}

// 7: symlinks are never followed: the host files they point at stay as they are; a symlink as
// DIR is refused.
fn symlinks_are_never_followed() {
    let Some(_) = require!(Root) else { return };
    let (tmp, root) = sample();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("host-file"), "h").unwrap();
    std::os::unix::fs::symlink(outside.join("host-file"), root.join("etc/to-host-file")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("etc/to-outside")).unwrap();
    let passwd = std::fs::symlink_metadata("/etc/passwd").unwrap();
    assert_code(&shift(&root, &["b:0:100000:65536"]), 0);
    use std::os::unix::fs::MetadataExt;
    let p2 = std::fs::symlink_metadata("/etc/passwd").unwrap();
    assert_eq!(
        (p2.uid(), p2.gid(), p2.mode(), p2.ctime()),
        (passwd.uid(), passwd.gid(), passwd.mode(), passwd.ctime())
    );
    for f in [outside.clone(), outside.join("host-file")] {
        assert_eq!(
            std::fs::symlink_metadata(&f).unwrap().uid(),
            0,
            "{}",
            f.display()
        );
    }
    assert_eq!(
        std::fs::symlink_metadata(root.join("etc/to-outside"))
            .unwrap()
            .uid(),
        100000
    );
    // DIR given as a symlink.
    let via = tmp.path().join("via-link");
    std::os::unix::fs::symlink(&root, &via).unwrap();
    let out = shift(&via, &["-r", "b:0:100000:65536"]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("is a symlink"), "{}", stderr(&out));
    assert_eq!(
        std::fs::symlink_metadata(root.join("bin/su"))
            .unwrap()
            .uid(),
        100000
    );
}

// 7: swapping a directory for a symlink while the walk runs cannot redirect a change outside.
fn swapping_a_directory_for_a_symlink_mid_walk_cannot_escape() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for i in 0..200 {
        std::fs::write(outside.join(format!("f{i}")), "x").unwrap();
    }
    std::fs::create_dir(&root).unwrap();
    for d in 0..40 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..200 {
            std::fs::write(dir.join(format!("f{i}")), "x").unwrap();
        }
    }
    // Swaps each dN for a symlink to OUTSIDE and back, over and over, while `during` runs.
    let swapping = |during: &dyn Fn() -> Output| -> (Output, u32) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (r, o) = (root.clone(), outside.clone());
        let swapper = std::thread::spawn(move || {
            let mut swaps = 0u32;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for d in 0..40 {
                    let dir = r.join(format!("d{d}"));
                    let aside = r.join(format!("d{d}.aside"));
                    if std::fs::rename(&dir, &aside).is_ok() {
                        let _ = std::os::unix::fs::symlink(&o, &dir);
                        std::thread::yield_now();
                        let _ = std::fs::remove_file(&dir);
                        std::fs::rename(&aside, &dir).unwrap();
                        swaps += 1;
                    }
                }
            }
            swaps
        });
        let out = during();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, swapper.join().unwrap())
    };
    // Every inode under the tree (walked by path now that nothing moves) has this owner, and
    // nothing outside changed.
    let check = |uid: u32, what: &str| {
        use std::os::unix::fs::MetadataExt;
        let mut seen = 0;
        for d in 0..40 {
            let dir = root.join(format!("d{d}"));
            assert!(!dir.is_symlink(), "{what}: d{d} left a symlink");
            assert_eq!(
                std::fs::symlink_metadata(&dir).unwrap().uid(),
                uid,
                "{what}: d{d}"
            );
            for f in std::fs::read_dir(&dir).unwrap() {
                let m = std::fs::symlink_metadata(f.unwrap().path()).unwrap();
                assert_eq!(m.uid(), uid, "{what}: a file in d{d} was not shifted");
                seen += 1;
            }
        }
        assert_eq!(seen, 40 * 200, "{what}");
        for f in std::fs::read_dir(&outside).unwrap() {
            let m = std::fs::symlink_metadata(f.unwrap().path()).unwrap();
            assert_eq!(m.uid(), 0, "{what}: a file outside the tree was changed");
        }
        assert_eq!(
            std::fs::symlink_metadata(&outside).unwrap().uid(),
            0,
            "{what}"
        );
    };
    // The files (of 8000) in the tree now owned by `uid`.
    let owned_by = |uid: u32| {
        use std::os::unix::fs::MetadataExt;
        (0..40)
            .flat_map(|d| std::fs::read_dir(root.join(format!("d{d}"))).unwrap())
            .filter(|f| {
                std::fs::symlink_metadata(f.as_ref().unwrap().path())
                    .unwrap()
                    .uid()
                    == uid
            })
            .count()
    };
    // Under the swaps a shift completes (0: every file shifted, verified) or stops short (1,
    // pending), listing the directories replaced under it and those whose entries changed
    // while it ran (a directory renamed while its parent is read is missed by readdir), having
    // changed most of the tree. Run again on the still tree, it ends the job: 0, every inode.
    let finish = |args: &[&str], out: &Output, uid: u32, what: &str| {
        let done = owned_by(uid);
        match out.status.code() {
            Some(0) => assert_eq!(
                done,
                8000,
                "{what} under swaps said every inode was verified, but left {} files: {}",
                8000 - done,
                stderr(out)
            ),
            Some(1) => assert!(
                stderr(out).contains("replaced during the walk")
                    || stderr(out).contains("changed while the shift ran"),
                "{what} under swaps: exit 1 without naming the change: {}",
                stderr(out)
            ),
            _ => panic!("{what} under swaps: {:?} {}", out.status, stderr(out)),
        }
        assert!(
            done >= 4000,
            "{what} under swaps changed {done} files of 8000"
        );
        assert_code(&shift(&root, args), 0);
    };
    let fwd: &[&str] = &["b:0:100000:65536"];
    let rev: &[&str] = &["-r", "b:0:100000:65536"];
    for round in 0..5 {
        let (out, swaps) = swapping(&|| shift(&root, fwd));
        assert!(
            swaps > 0,
            "round {round}: no swap happened during the shift"
        );
        finish(fwd, &out, 100000, "the shift");
        check(100000, &format!("round {round}, after the shift"));
        let (out, swaps) = swapping(&|| shift(&root, rev));
        assert!(
            swaps > 0,
            "round {round}: no swap happened during the rollback"
        );
        finish(rev, &out, 0, "the rollback");
        check(0, &format!("round {round}, after the rollback"));
    }
}

// 7: paths longer than PATH_MAX work.
/// One directory of 20000 files and 40 subdirectories (its entries are read a getdents call at
/// a time and handed out in chunks to every thread): every inode is shifted once, setuid bits
/// and hardlinks across chunks included, with one thread and with several, and back.
fn a_huge_flat_directory_is_shifted_whole_in_chunks() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let flat = root.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    for i in 0..20_000 {
        std::fs::write(flat.join(format!("f{i:05}")), "").unwrap();
        if i % 500 == 0 {
            std::fs::create_dir(flat.join(format!("d{i:05}"))).unwrap();
            std::fs::write(flat.join(format!("d{i:05}/inner")), "").unwrap();
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(flat.join("f00007"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    // Hardlinks whose names land in different chunks.
    std::fs::hard_link(flat.join("f00001"), flat.join("g-link-1")).unwrap();
    std::fs::hard_link(flat.join("f19999"), flat.join("a-link-2")).unwrap();
    let not_owned_by = |uid: u32| {
        let listing = run(std::process::Command::new("find").arg(&root).args([
            "-not",
            "-uid",
            &uid.to_string(),
            "-o",
            "-not",
            "-gid",
            &uid.to_string(),
        ]));
        stdout(&listing)
    };
    for threads in ["1", "4"] {
        let out = shift(&root, &["b:0:100000:65536", "--threads", threads, "--json"]);
        assert_code(&out, 0);
        let summary = json(&out);
        // 20000 files + 2 links seen again, 40 dirs + 40 inner files, flat, the root.
        assert_eq!(summary["inodes"], 20_000 + 2 + 40 + 40 + 2, "{summary}");
        assert_eq!(summary["hardlinks_skipped"], 2, "{summary}");
        assert_eq!(
            not_owned_by(100000),
            "",
            "{threads} threads: inodes left unshifted"
        );
        let m = std::fs::metadata(flat.join("f00007")).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
        let status = run(&mut idshift(&[
            "status",
            root.to_str().unwrap(),
            "--json",
            "--threads",
            threads,
        ]));
        assert_code(&status, 0);
        let status = json(&status);
        // status counts names: the two links too.
        assert_eq!(status["inodes"], 20_000 + 2 + 40 + 40 + 2, "{status}");
        assert_eq!(status["setuid_files"], 1);
        let out = shift(&root, &["-r", "b:0:100000:65536", "--threads", threads]);
        assert_code(&out, 0);
        assert_eq!(
            not_owned_by(0),
            "",
            "{threads} threads: inodes left unshifted back"
        );
    }
}

fn paths_longer_than_path_max() {
    let Some(_) = require!(Root) else { return };
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    std::fs::create_dir(&root).unwrap();
    let name = "d".repeat(200);
    let mut fd = nix::fcntl::open(&root, OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    let depth = 30; // 30 × 201 bytes > 4096
    for _ in 0..depth {
        mkdirat(&fd, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        fd = openat(&fd, name.as_str(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    }
    let leaf = openat(
        &fd,
        "leaf",
        OFlag::O_CREAT | OFlag::O_WRONLY,
        Mode::from_bits_truncate(0o4755),
    )
    .unwrap();
    nix::unistd::fchown(&leaf, Some(0.into()), Some(0.into())).unwrap();
    nix::sys::stat::fchmod(&leaf, Mode::from_bits_truncate(0o4755)).unwrap();
    let out = shift(&root, &["b:0:100000:65536"]);
    assert_code(&out, 0);
    let st = nix::sys::stat::fstat(&leaf).unwrap();
    assert_eq!((st.st_uid, st.st_mode & 0o7777), (100000, 0o4755));
    let listing = run(std::process::Command::new("find")
        .arg(&root)
        .args(["-not", "-uid", "100000"]));
    assert_eq!(stdout(&listing), "", "inodes left unshifted");
}

fn mount(args: &[&str]) -> bool {
    std::process::Command::new("mount")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

// 8: mounts inside the tree (a tmpfs, and a bind mount of the same filesystem, which has the
// same st_dev) are left alone unless --cross-mounts.
fn stays_on_its_mount_unless_told() {
    let Some(_) = require!(Root) else { return };
    let (tmp, root) = sample();
    let other = tmp.path().join("bind-source");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("f"), "x").unwrap();
    let tmpfs = root.join("var/tmpfs");
    let bind = root.join("srv/bind");
    std::fs::create_dir(&tmpfs).unwrap();
    std::fs::create_dir(&bind).unwrap();
    if !mount(&["-t", "tmpfs", "tmpfs", tmpfs.to_str().unwrap()]) {
        skip("cannot mount a tmpfs here");
    }
    let _u1 = Unmount(tmpfs.clone());
    assert!(mount(&[
        "--bind",
        other.to_str().unwrap(),
        bind.to_str().unwrap()
    ]));
    let _u2 = Unmount(bind.clone());
    std::fs::write(tmpfs.join("t"), "x").unwrap();
    use std::os::unix::fs::MetadataExt;
    let out = shift(&root, &["b:0:100000:65536", "--json"]);
    assert_code(&out, 0);
    let s = json(&out);
    let skipped: Vec<&str> = s["mounts_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    for (p, uid) in [
        (&tmpfs, 0),
        (&tmpfs.join("t"), 0),
        (&bind.join("f"), 0),
        (&other.join("f"), 0),
        (&root.join("srv"), 100000),
    ] {
        assert_eq!(
            std::fs::symlink_metadata(p).unwrap().uid(),
            uid,
            "{}",
            p.display()
        );
    }
    assert_code(&shift(&root, &["-r", "b:0:100000:65536"]), 0);
    let out = shift(&root, &["b:0:100000:65536", "--cross-mounts"]);
    assert_code(&out, 0);
    assert_eq!(
        std::fs::symlink_metadata(tmpfs.join("t")).unwrap().uid(),
        100000
    );
    assert_eq!(
        std::fs::symlink_metadata(bind.join("f")).unwrap().uid(),
        100000
    );
}

// 10: a file that cannot be changed is reported with path and errno; the rest is done; exit 1;
// the same command finishes the job once the cause is gone.
fn immutable_file_is_reported_and_a_rerun_finishes() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    let before = snapshot(&root);
    let su = root.join("bin/su");
    let chattr = |flag: &str| {
        run(std::process::Command::new("chattr").arg(flag).arg(&su))
            .status
            .success()
    };
    if !chattr("+i") {
        skip(format!("chattr +i is not supported on {}", root.display()));
    }
    let out = shift(&root, &["b:0:100000:65536", "--json"]);
    chattr("-i");
    assert_code(&out, 1);
    let s = json(&out);
    assert_eq!(s["error_count"], 1);
    assert_eq!(s["errors"][0]["path"], su.to_str().unwrap());
    assert_eq!(s["errors"][0]["op"], "chown");
    assert_eq!(s["errors"][0]["errno"], libc::EPERM);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}: chown: Operation not permitted", su.display())),
        "{err}"
    );
    let status = run(&mut idshift(&["status", root.to_str().unwrap()]));
    assert!(
        stdout(&status)
            .contains("unfinished shift: from 'host' to 'u:0:100000:65536 g:0:100000:65536'"),
        "{}",
        stdout(&status)
    );
    assert_eq!(
        snapshot(&root)[Path::new("bin/su")],
        before[Path::new("bin/su")]
    );
    let out = shift(&root, &["b:0:100000:65536"]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("resumed"), "{}", stdout(&out));
    assert_shifted(&before, &snapshot(&root), &plus(100000));
    assert!(!journal_of(&root).exists());
}

// --dry-run writes nothing anywhere; --strict refuses outliers before changing anything.
fn dry_run_and_strict_change_nothing() {
    let Some(_) = require!(Root) else { return };
    let (tmp, root) = sample();
    let before = snapshot(&root);
    let out = shift(&root, &["b:0:100000:65536", "-n", "--json"]);
    assert_code(&out, 0);
    let s = json(&out);
    assert_eq!(s["dry_run"], true);
    assert!(s["changed"].as_u64().unwrap() > 20);
    assert_eq!(snapshot(&root), before);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no journal"
    );
    assert_eq!(get_xattr(&root, c"user.idshift.map"), None);
    let out = shift(&root, &["b:0:100000:65536", "--strict"]);
    assert_code(&out, 3);
    assert!(stderr(&out).contains("--strict"), "{}", stderr(&out));
    assert!(stderr(&out).contains("uid 65536"), "{}", stderr(&out));
    assert_eq!(snapshot(&root), before);
    assert!(!journal_of(&root).exists());
}

// The same shift twice changes nothing, but the record is a claim the second run checks: it
// walks the whole tree. A shift from the wrong map is refused.
fn recorded_map_makes_a_second_shift_a_noop_and_refuses_a_wrong_from() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    assert_code(&shift(&root, &["b:0:100000:65536"]), 0);
    let once = snapshot(&root);
    let out = shift(&root, &["b:0:100000:65536", "--json"]);
    assert_code(&out, 0);
    assert_eq!(json(&out)["already_shifted"], true);
    assert_eq!(json(&out)["changed"], 0);
    assert_eq!(json(&out)["inodes"], once.len(), "every inode checked");
    assert_eq!(snapshot(&root), once);
    let out = shift(
        &root,
        &["--from", "b:0:200000:65536", "--to", "b:0:300000:65536"],
    );
    assert_code(&out, 3);
    assert!(stderr(&out).contains("records map"), "{}", stderr(&out));
    assert_eq!(snapshot(&root), once);
}

// Parallel and single-threaded runs give identical trees.
fn parallel_and_single_threaded_agree() {
    let Some(_) = require!(Root) else { return };
    let (_t1, a) = sample();
    let (_t2, b) = sample();
    assert_code(&shift(&a, &["b:0:100000:65536", "--threads", "1"]), 0);
    assert_code(&shift(&b, &["b:0:100000:65536", "--threads", "8"]), 0);
    assert_eq!(
        without_times_and_inodes(&snapshot(&a)),
        without_times_and_inodes(&snapshot(&b))
    );
}

/// Runs `args` with the process killed before its Nth change, for N = 1, 2, … until a run
/// completes; after each kill the same command is run again, and the tree must equal `want`.
fn crash_everywhere(prepare: &dyn Fn(&Path), args: &[&str], other_shift: &[&str]) -> usize {
    let (_t, reference) = sample();
    prepare(&reference);
    assert_code(&shift(&reference, args), 0);
    let want = without_times_and_inodes(&snapshot(&reference));
    let mut n = 1;
    loop {
        let (_t, root) = sample();
        prepare(&root);
        let before = snapshot(&root);
        let a = shift_args(&root, args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = run(idshift(&a)
            .args(["--threads", "1"])
            .env("IDSHIFT_CRASH_AFTER_STEPS", n.to_string()));
        use std::os::unix::process::ExitStatusExt;
        if out.status.signal() != Some(9) {
            assert_code(&out, 0);
            assert_eq!(
                without_times_and_inodes(&snapshot(&root)),
                want,
                "uninterrupted run at N={n}"
            );
            return n;
        }
        if n == 3 {
            // A different shift on the half-shifted tree is refused, naming the pending one.
            let refused = shift(&root, other_shift);
            assert_code(&refused, 3);
            assert!(
                stderr(&refused).contains("unfinished shift"),
                "{}",
                stderr(&refused)
            );
        }
        let again = shift(&root, args);
        assert_code(&again, 0);
        let got = without_times_and_inodes(&snapshot(&root));
        if got != want {
            let diff: Vec<_> = want
                .iter()
                .filter(|(p, m)| got.get(*p) != Some(m))
                .map(|(p, m)| format!("{}: want {m:?}\n got {:?}", p.display(), got.get(p)))
                .collect();
            panic!(
                "killed before change {n}, then rerun: tree differs:\n{}",
                diff.join("\n")
            );
        }
        let _ = before;
        assert!(!journal_of(&root).exists(), "journal left after N={n}");
        n += 1;
    }
}

// 12: SIGKILL before any change, then the same command again: identical to an uninterrupted run.
fn crash_at_every_step_then_rerun_matches_uninterrupted() {
    let Some(_) = require!(Root) else { return };
    let steps = crash_everywhere(&|_| {}, &["b:0:100000:65536"], &["b:0:200000:65536"]);
    eprintln!("killed and resumed at {} points", steps - 1);
    assert!(steps > 30, "only {steps} steps: the hook is not reached");
}

// 12 with overlapping FROM and TO ranges, where an id alone cannot tell done from not done.
fn crash_at_every_step_with_overlapping_ranges() {
    let Some(_) = require!(Root) else { return };
    let prepare = |root: &Path| assert_code(&shift(root, &["b:0:100000:65536"]), 0);
    crash_everywhere(
        &prepare,
        &["--from", "b:0:100000:65536", "--to", "b:0:100007:65536"],
        &["-r", "b:0:100000:65536"],
    );
}

fn status_reports_blocks_map_caps_acls_and_outliers() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    assert_code(&shift(&root, &["b:0:100000:65536"]), 0);
    let out = run(&mut idshift(&[
        "status",
        root.to_str().unwrap(),
        "--json",
        "-m",
        "b:0:100000:65536",
    ]));
    assert_code(&out, 0);
    let s = json(&out);
    let n = snapshot(&root).len() as u64;
    assert_eq!(s["inodes"], n);
    assert_eq!(s["root_uid"], 100000);
    assert_eq!(s["schema"], 2);
    let block = |host: u32| serde_json::json!([{"inside": 0, "host": host, "count": 65536}]);
    assert_eq!(s["apparent_map"]["view"]["uid"], block(100000), "{s}");
    assert_eq!(s["apparent_map"]["view"]["gid"], block(100000), "{s}");
    assert_eq!(
        s["apparent_map"]["every_id_within"], false,
        "the outliers lie below"
    );
    assert_eq!(s["setuid_files"], 3, "su, both, suidcap");
    assert_eq!(s["setgid_files"], 2);
    assert_eq!(s["caps_v3"], 2);
    assert_eq!(
        s["caps_rootids"],
        serde_json::json!([{"rootid": 100000, "files": 2}])
    );
    assert_eq!(s["acl_access"], 1);
    assert_eq!(s["acl_default"], 1);
    assert_eq!(s["outlier_inodes"], 2);
    let outliers: Vec<(String, u64)> = s["outlier_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_string(),
                o["id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        !outliers.is_empty() && outliers.iter().all(|(_, id)| *id < 100000),
        "{outliers:?}"
    );
    assert_eq!(
        s["recorded_map"]["text"],
        "u:0:100000:65536 g:0:100000:65536"
    );
    assert_eq!(s["recorded_map"]["uid"], block(100000));
    assert_eq!(s["pending"], serde_json::Value::Null);
    // Every id (100000-101000, and the outliers 65536 and 70000) lies in block 65536-131071.
    assert_eq!(
        s["uid_blocks"],
        serde_json::json!([{"start": 65536, "inodes": n}])
    );
    let text = run(&mut idshift(&["status", root.to_str().unwrap()]));
    assert!(
        stdout(&text).contains("appears to use:  b:0:100000:65536"),
        "{}",
        stdout(&text)
    );
}

fn bad_input_is_one_line_and_a_usage_status() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    let before = snapshot(&root);
    for (args, code) in [
        (vec!["b:0:100000:65536x"], 2),
        (vec!["b:0:100000:65536", "u:10:200000:1"], 2),
        (vec!["--from", "b:0:100000:65536"], 2),
        (
            vec!["--from", "b:0:100000:65536", "--to", "b:0:200000:10"],
            2,
        ),
        (
            vec![
                "--from-container",
                "nope",
                "--to",
                "b:0:1:1",
                "-P",
                "/nonexistent",
            ],
            2,
        ),
    ] {
        let out = shift(&root, &args);
        assert_code(&out, code);
        assert!(!stderr(&out).is_empty());
    }
    let out = shift(&root.join("missing"), &["b:0:100000:65536"]);
    assert_code(&out, 2);
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(snapshot(&root), before);
}

// --from-container/--to-container take the maps from LXC configs under -P.
fn maps_from_lxc_containers() {
    let Some(_) = require!(Root) else { return };
    let (tmp, root) = sample();
    let lxcpath = tmp.path().join("lxc");
    for (name, base) in [("c1", 100000), ("c2", 200000)] {
        std::fs::create_dir_all(lxcpath.join(name)).unwrap();
        std::fs::write(
            lxcpath.join(name).join("config"),
            format!("lxc.idmap = u 0 {base} 65536\nlxc.idmap = g 0 {base} 65536\n"),
        )
        .unwrap();
    }
    assert_code(&shift(&root, &["b:0:100000:65536"]), 0);
    let before = snapshot(&root);
    let p = lxcpath.to_str().unwrap();
    let out = shift(
        &root,
        &["--from-container", "c1", "--to-container", "c2", "-P", p],
    );
    assert_code(&out, 0);
    let map = |_, id: u32| (100000..165536).contains(&id).then_some(id + 100000);
    assert_shifted(&before, &snapshot(&root), &map);
}

// Ctrl-C in the middle of a shift: it says what is pending and how to end it, dies of SIGINT as
// a shell expects, and the command it names finishes the job.
fn interrupted_shift_says_how_to_finish_it() {
    let Some(_) = require!(Root) else { return };
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    for d in 0..200 {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::File::create(dir.join(format!("f{f}"))).unwrap();
        }
    }
    let args = shift_args(&root, &["b:0:100000:65536", "--threads", "1"]);
    let mut child = idshift(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || std::io::read_to_string(err).unwrap());
    // Once the shift has begun changing the tree (d0 comes first with one thread or not: any
    // directory already shifted will do), interrupt it.
    let begun = std::time::Instant::now();
    let started = loop {
        let any = (0..200).any(|d| {
            std::fs::symlink_metadata(root.join(format!("d{d}/f999")))
                .is_ok_and(|m| m.uid() == 100000)
        });
        if any || child.try_wait().unwrap().is_some() {
            break any;
        }
        assert!(begun.elapsed().as_secs() < 60, "the shift never began");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let status = wait_within(&mut child, std::time::Duration::from_secs(60)).expect("hung");
    let err = err.join().unwrap();
    if status.code() == Some(0) {
        skip(format!(
            "the shift finished before the interrupt reached it (begun: {started})"
        ));
    }
    assert_eq!(status.signal(), Some(2), "{status:?}: {err}");
    let last = err.lines().last().unwrap_or_default();
    let dir = root.display();
    assert_eq!(
        last,
        format!(
            "idshift: interrupted: if the shift had begun, {dir} is left pending (`idshift \
             status {dir}` shows it): run `idshift shift {dir} u:0:100000:65536 g:0:100000:65536` \
             to finish it, or `idshift shift -r {dir} u:0:100000:65536 g:0:100000:65536` to roll \
             it back"
        )
    );
    let st = run(&mut idshift(&["status", &dir.to_string()]));
    assert!(
        stdout(&st).contains("unfinished shift: from"),
        "{}",
        stdout(&st)
    );
    assert_code(&shift(&root, &["b:0:100000:65536"]), 0);
    let left = (0..200)
        .flat_map(|d| std::fs::read_dir(root.join(format!("d{d}"))).unwrap())
        .filter(|e| e.as_ref().unwrap().metadata().unwrap().uid() != 100000)
        .count();
    assert_eq!(left, 0, "the named command did not finish the shift");
}
