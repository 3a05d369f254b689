//! A crash at any instant loses nothing, and a loss is never forgotten (issue 22).
//!
//! The real binary is killed with SIGKILL — at random times from outside, and at every change
//! it makes to the disk through its fault hook (`IDSHIFT_CRASH_AFTER_STEPS`, which also stops
//! between a chown and the note that follows it) — on trees dense with setuid/setgid files, v2
//! and v3 capabilities and ACLs; the first resume is killed too; the last run must exit 0 and
//! leave every inode (ids, mode, xattrs) as one uninterrupted run does. Where another process
//! changes a file after the crash, the change wins, and the loss is named by every later run and
//! by `status` until the file is restored or the loss accepted. As root.
//!
//! Every child runs under a deadline.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    use common::harness::Need;
    common::harness::main(vec![
        trial!(
            killed_at_random_twice_one_thread,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            killed_at_random_twice_default_threads,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            killed_at_every_step_then_a_killed_resume,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_rollback_killed_at_every_step_twice,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_rollback_killed_at_random_twice,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            killed_between_the_chown_and_its_note,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_chmod_after_the_crash_wins_and_the_loss_stays_until_restored,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_write_after_the_crash_wins_and_the_loss_stays_until_accepted,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_setcap_after_the_crash_wins_and_nothing_is_lost,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            accept_loss_of_a_file_with_no_loss_is_refused,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_migrate_whose_rootfs_names_a_loss_still_moves_the_config,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            chmod_g_minus_s_after_the_crash_wins_on_setgid_without_group_exec,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_file_moved_out_before_the_resume_keeps_its_loss_listed,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_renamed_copied_or_foreign_listed_tree_still_names_its_losses,
            Need::Root,
            Need::ScratchXattrs
        ),
    ])
}

const FROM: &str = "b:0:100000:65536";
const TO: &str = "b:0:200000:65536";
const CRASH: &str = "IDSHIFT_CRASH_AFTER_STEPS";
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The trees.

fn make(path: &Path, dir: bool, uid: u32, mode: u32) {
    if dir {
        std::fs::create_dir(path).unwrap();
    } else {
        std::fs::write(path, path.as_os_str().as_encoded_bytes()).unwrap();
    }
    lchown(path, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A v3 capability (`cap_net_raw+ep`) owned by `rootid`.
fn cap_v3(rootid: u32) -> Vec<u8> {
    let v2 = caps::decode(&CAP_NET_RAW_V2).unwrap();
    caps::encode(&v2.with_rootid(rootid))
}

/// An ACL naming ids of the container (FROM), one outside it.
fn acl_of(base: u32, i: u32) -> Vec<u8> {
    use acl::*;
    acl_bytes(&[
        (TAG_USER_OBJ, 6, UNDEFINED_ID),
        (TAG_USER, 6, base + 1000 + i % 7),
        (TAG_USER, 4, 70000),
        (TAG_GROUP_OBJ, 4, UNDEFINED_ID),
        (TAG_GROUP, 4, base + 50),
        (TAG_MASK, 6, UNDEFINED_ID),
        (TAG_OTHER, 0, UNDEFINED_ID),
    ])
}

/// A tree in FROM (`b:0:100000:65536`) dense with what a chown takes: `files` files in
/// directories of 16, one in three setuid, setgid or both, one in five with a v2 and one in
/// seven with a v3 capability, one in four with an ACL (and a default ACL on every other
/// directory), a hardlink and a symlink per directory. Returns its root (TMP/rootfs).
fn dense(files: u32) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    let base = 100000;
    make(&root, true, base, 0o755);
    for i in 0..files {
        let d = root.join(format!("d{:03}", i / 16));
        if i % 16 == 0 {
            make(&d, true, base + i % 3, 0o755);
            if i % 32 == 0 {
                set_xattr(&d, acl::DEFAULT, &acl_of(base, i));
            }
            std::os::unix::fs::symlink("f0", d.join("link")).unwrap();
            lchown(d.join("link"), Some(base), Some(base)).unwrap();
        }
        let f = d.join(format!("f{i}"));
        let mode = match i % 6 {
            0 => 0o4755,
            2 => 0o2755,
            4 => 0o6750,
            _ => 0o644,
        };
        make(&f, false, base + i % 5, mode);
        if i % 5 == 1 {
            set_xattr(&f, caps::NAME, &CAP_NET_RAW_V2);
        }
        if i % 7 == 3 {
            set_xattr(&f, caps::NAME, &cap_v3(base));
        }
        if i % 4 == 2 {
            set_xattr(&f, acl::ACCESS, &acl_of(base, i));
        }
        // chown and a capability write may not keep the mode: set it last.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        if i % 16 == 5 {
            std::fs::hard_link(&f, d.join("hard")).unwrap();
        }
    }
    (tmp, root)
}

/// Every inode's kind, mode, ids, symlink target and xattrs (no times, no inode numbers).
fn state(root: &Path) -> BTreeMap<PathBuf, Meta> {
    without_times_and_inodes(&snapshot(root))
}

/// The setuid/setgid files and capabilities in `want` that `got` lacks, one line each.
fn differences(want: &BTreeMap<PathBuf, Meta>, got: &BTreeMap<PathBuf, Meta>) -> Vec<String> {
    let mut out: Vec<String> = want
        .iter()
        .filter(|(p, m)| got.get(*p) != Some(m))
        .map(|(p, m)| format!("{}: want {m:?}\n      got {:?}", p.display(), got.get(p)))
        .collect();
    out.extend(
        got.keys()
            .filter(|p| !want.contains_key(*p))
            .map(|p| format!("{}: not wanted", p.display())),
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Running and killing the binary.

fn shift_cmd(root: &Path, args: &[&str]) -> Command {
    let mut cmd = idshift(&["shift"]);
    cmd.arg(root).args(args).args(["--progress", "never"]);
    cmd
}

#[track_caller]
fn shift(root: &Path, args: &[&str]) -> Output {
    run_limited(&mut shift_cmd(root, args), LIMIT).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the shift killed by its fault hook before its `n`th change; `true` if it was killed.
fn killed_at_step(root: &Path, args: &[&str], n: u32) -> bool {
    let out = run_limited(shift_cmd(root, args).env(CRASH, n.to_string()), LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    if out.status.signal() == Some(9) {
        return true;
    }
    assert_code(&out, 0);
    false
}

/// Starts the shift and sends it SIGKILL after `after` (if it is still running then); `true`
/// if the kill came before it ended.
fn killed_after(root: &Path, args: &[&str], after: Duration) -> bool {
    let mut child = shift_cmd(root, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let _ = child.kill();
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            if status.signal() == Some(9) {
                return true;
            }
            assert!(
                status.success(),
                "the run to be killed failed on its own: {status:?}"
            );
            return false;
        }
        assert!(Instant::now() < deadline, "a killed shift did not end");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A small xorshift generator: the seed is printed, and `IDSHIFT_TEST_SEED` replays it.
struct Rng(u64);

impl Rng {
    fn new(what: &str) -> Rng {
        let seed = std::env::var("IDSHIFT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{what}: IDSHIFT_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The tree an uninterrupted run of `args` leaves on a fresh `dense(files)`, and how long the
/// run took.
fn reference(
    files: u32,
    prepare: &dyn Fn(&Path),
    args: &[&str],
) -> (BTreeMap<PathBuf, Meta>, Duration) {
    let (_t, root) = dense(files);
    prepare(&root);
    let t = Instant::now();
    assert_code(&shift(&root, args), 0);
    (state(&root), t.elapsed())
}

/// The last run after the kills: exit 0, the tree as `want`, nothing left beside it.
#[track_caller]
fn finish_matches(root: &Path, args: &[&str], want: &BTreeMap<PathBuf, Meta>, what: &str) {
    let out = shift(root, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: the last run: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let diff = differences(want, &state(root));
    assert!(
        diff.is_empty(),
        "{what}: {} inodes differ from an uninterrupted run:\n{}",
        diff.len(),
        diff.join("\n")
    );
    assert!(!journal_of(root).exists(), "{what}: a journal is left");
    assert!(!losses_of(root).exists(), "{what}: a loss list is left");
}

fn losses_of(root: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(root.file_name().unwrap());
    name.push(".idshift-losses");
    root.parent().unwrap().join(name)
}

/// Random kills: each trial kills a run at a random time within an uninterrupted run's length,
/// kills the resume the same way, and finishes with a third run.
fn random_trials(threads: Option<&str>, trials: u32, prepare: &dyn Fn(&Path), args: &[&str]) {
    let mut args = args.to_vec();
    if let Some(t) = threads {
        args.extend(["--threads", t]);
    }
    let files = 1200;
    let (want, took) = reference(files, prepare, &args);
    let mut rng = Rng::new("random kills");
    let span = took.as_micros() as u64 * 5 / 4 + 1;
    let (mut killed, mut killed_twice) = (0, 0);
    for trial in 0..trials {
        let (_t, root) = dense(files);
        prepare(&root);
        let (a, b) = (rng.below(span), rng.below(span));
        let first = killed_after(&root, &args, Duration::from_micros(a));
        let second = killed_after(&root, &args, Duration::from_micros(b));
        killed += first as u32;
        killed_twice += (first && second) as u32;
        finish_matches(
            &root,
            &args,
            &want,
            &format!("trial {trial}: killed after {a} µs ({first}), then {b} µs ({second})"),
        );
    }
    eprintln!("{trials} trials: {killed} killed, {killed_twice} killed twice");
    assert!(
        killed_twice > 0,
        "no trial killed both runs: nothing was tested"
    );
}

fn killed_at_random_twice_one_thread() {
    random_trials(Some("1"), 16, &|_| {}, &["--from", FROM, "--to", TO]);
}

fn killed_at_random_twice_default_threads() {
    random_trials(None, 16, &|_| {}, &["--from", FROM, "--to", TO]);
}

// A rollback (the exact reverse of a shift killed half-way) killed at random twice: every inode
// as it was before the shift.
fn a_rollback_killed_at_random_twice() {
    let fwd = ["--from", FROM, "--to", TO];
    let back = ["--from", TO, "--to", FROM];
    let (_t, root) = dense(1200);
    let want = state(&root);
    let t = Instant::now();
    assert_code(&shift(&root, &fwd), 0);
    let span = t.elapsed().as_micros() as u64 + 1;
    let mut rng = Rng::new("random kills of a rollback");
    let mut tested = 0;
    for trial in 0..12 {
        let (_t, root) = dense(1200);
        if !killed_after(&root, &fwd, Duration::from_micros(rng.below(span))) {
            continue; // the shift finished: its reverse is a new shift, not a rollback
        }
        let (a, b) = (rng.below(span), rng.below(span));
        let first = killed_after(&root, &back, Duration::from_micros(a));
        let second = killed_after(&root, &back, Duration::from_micros(b));
        tested += (first && second) as u32;
        finish_matches(
            &root,
            &back,
            &want,
            &format!("rollback trial {trial}: killed after {a} µs ({first}), {b} µs ({second})"),
        );
    }
    assert!(tested > 0, "no trial killed a rollback twice");
}

// ---------------------------------------------------------------------------------------------
// Every kill point.

/// The number of changes an uninterrupted run of `args` makes (its last kill point + 1).
fn kill_points(files: u32, args: &[&str]) -> u32 {
    (1..10_000)
        .find(|&n| {
            let (_t, root) = dense(files);
            !killed_at_step(&root, args, n)
        })
        .unwrap()
}

// Killed before every change of a run on one thread (between each chown and its note too),
// then the resume killed at a point further on, then the same command: as uninterrupted.
fn killed_at_every_step_then_a_killed_resume() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    let files = 40;
    let (want, _) = reference(files, &|_| {}, &args);
    let total = kill_points(files, &args);
    eprintln!("{total} kill points");
    for n in 1..total {
        for m in [1, 2, 3, 5, 8, n / 2 + 1, total / 3] {
            let (_t, root) = dense(files);
            assert!(killed_at_step(&root, &args, n), "n={n}");
            killed_at_step(&root, &args, m);
            finish_matches(&root, &args, &want, &format!("killed at {n}, then at {m}"));
        }
    }
}

// A shift killed before each of its changes in turn, its rollback killed before each of its
// own changes and then once more early in the next run, then the rollback run to the end:
// every inode as before the shift.
fn a_rollback_killed_at_every_step_twice() {
    let fwd = ["--from", FROM, "--to", TO, "--threads", "1"];
    let back = ["--from", TO, "--to", FROM, "--threads", "1"];
    let files = 12;
    let (_t, root) = dense(files);
    let want = state(&root);
    let total = kill_points(files, &fwd);
    let mut runs = 0;
    for first in 1..total {
        // Killed before it changed anything (its journal written, the tree not yet marked):
        // there is nothing to roll back, and the reverse is refused (exit 3).
        let (_t, root) = dense(files);
        assert!(killed_at_step(&root, &fwd, first));
        if shift(&root, &back).status.code() == Some(3) {
            continue;
        }
        for n in 1.. {
            let (_t, root) = dense(files);
            assert!(killed_at_step(&root, &fwd, first));
            if !killed_at_step(&root, &back, n) {
                break;
            }
            let m = n % 3 + 1;
            killed_at_step(&root, &back, m);
            finish_matches(
                &root,
                &back,
                &want,
                &format!("shift killed at {first}, rollback at {n}, then at {m}"),
            );
            runs += 1;
        }
    }
    eprintln!("{runs} rollbacks killed twice");
}

// ---------------------------------------------------------------------------------------------
// The reproduction, and changes made after the crash.

/// Ten `4755` files of container root; returns the tree.
fn ten_setuid() -> (tempfile::TempDir, PathBuf) {
    ten_files(0o4755, false)
}

/// Ten files of container root of mode `mode`, each with a v3 capability if `cap`.
fn ten_files(mode: u32, cap: bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    make(&root, true, 100000, 0o755);
    for i in 0..10 {
        let f = root.join(format!("f{i}"));
        make(&f, false, 100000, mode);
        if cap {
            set_xattr(&f, caps::NAME, &cap_v3(100000));
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    (tmp, root)
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Kills `args` at successive points until one leaves some file at TO's ids without its
/// setuid bit (between its chown and its mode step); returns the tree and that file.
fn killed_after_a_chown(
    tree: &dyn Fn() -> (tempfile::TempDir, PathBuf),
    args: &[&str],
    chowned: &dyn Fn(&Path) -> bool,
    after: u32,
) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let mut seen = 0;
    for n in 1..500 {
        let (t, root) = tree();
        assert!(
            killed_at_step(&root, args, n),
            "no kill point left a file half-done"
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| chowned(p))
            .collect();
        files.sort();
        if let Some(f) = files.pop() {
            seen += 1;
            if seen > after {
                return (t, root, f);
            }
        }
    }
    panic!("no kill point left a file half-done");
}

/// Ten setuid files, killed (the `after`th time one is) right after a file's chown, before its
/// mode step: that file at TO's ids without its setuid bit.
fn killed_after_a_setuid_chown(args: &[&str], after: u32) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let half_done = |p: &Path| owner(p).0 == 200000 && mode(p) == 0o755;
    killed_after_a_chown(&ten_setuid, args, &half_done, after)
}

/// The run exited 1 and named `what` of `file` as lost.
#[track_caller]
fn assert_names_loss(out: &Output, file: &Path, what: &str, when: &str) {
    assert_code(out, 1);
    let want = format!("{}: lost: {what}", file.display());
    assert!(stderr(out).contains(&want), "{when}: {}", stderr(out));
}

// The reproduction: killed right after a file's chown, before the note that follows it,
// then the same command, and once more: exit 0, every file 4755, nothing reported.
fn killed_between_the_chown_and_its_note() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    for after in 0..3 {
        let (_t, root, f) = killed_after_a_setuid_chown(&args, after);
        for again in 0..2 {
            let out = shift(&root, &args);
            assert_code(&out, 0);
            assert!(stderr(&out).is_empty(), "run {again}: {}", stderr(&out));
        }
        for i in 0..10 {
            let p = root.join(format!("f{i}"));
            assert_eq!((owner(&p).0, mode(&p)), (200000, 0o4755), "{}", p.display());
        }
        let st = run_limited(idshift(&["status", "--json"]).arg(&root), LIMIT).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        assert_eq!(v["setuid_files"], 10, "killed after {}", f.display());
    }
}

fn status_json(root: &Path) -> serde_json::Value {
    let out = run_limited(idshift(&["status", "--json"]).arg(root), LIMIT).unwrap();
    assert_code(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The paths `status` lists as lost (and not restored).
fn status_losses(root: &Path) -> Vec<String> {
    status_json(root)["losses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["restored"] == false)
                .map(|l| l["path"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// Killed after a file's chown, then another process chmods it: the chmod wins (no setuid bit
// comes back), and the loss is named by every later run (exit 1) and by status, until the bit
// is set again by hand; then it is cleared and runs exit 0.
fn a_chmod_after_the_crash_wins_and_the_loss_stays_until_restored() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    let (_t, root, f) = killed_after_a_setuid_chown(&args, 0);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o700)).unwrap();
    let name = f.display().to_string();
    for run in 0..3 {
        let out = shift(&root, &args);
        assert_names_loss(&out, &f, "its setuid bit", &format!("run {run}"));
        assert_eq!(mode(&f), 0o700, "run {run}: the chmod after the crash lost");
        assert_eq!(status_losses(&root), vec![name.clone()], "run {run}");
    }
    // Other files: all done.
    for i in 0..10 {
        let p = root.join(format!("f{i}"));
        if p != f {
            assert_eq!((owner(&p).0, mode(&p)), (200000, 0o4755), "{}", p.display());
        }
    }
    // Set again by hand: seen on disk, the loss is cleared.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4700)).unwrap();
    let out = shift(&root, &args);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("restored on disk: 1"),
        "{}",
        stdout(&out)
    );
    assert!(status_losses(&root).is_empty());
    assert!(!losses_of(&root).exists());
    assert_code(&shift(&root, &args), 0);
}

// Killed after the chown of a file with a capability, then the file is rewritten (the kernel
// drops what is left): the capability does not come back onto the new content; the loss stays
// through every later run — a different shift too — until `--accept-loss` names the file.
fn a_write_after_the_crash_wins_and_the_loss_stays_until_accepted() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    let tree = || ten_files(0o755, true);
    let has_cap = |p: &Path| get_xattr(p, caps::NAME).is_some();
    let (_t, root, f) =
        killed_after_a_chown(&tree, &args, &|p| owner(p).0 == 200000 && !has_cap(p), 1);
    std::fs::write(&f, b"#!/bin/sh\nexec id\n").unwrap();
    let name = f.display().to_string();
    let out = shift(&root, &args);
    assert_names_loss(&out, &f, "its file capability", "the resume");
    assert!(
        !has_cap(&f),
        "the capability came back onto rewritten content"
    );
    // The shift itself is complete: the record names TO; the loss still stands.
    let out = shift(&root, &args);
    assert_code(&out, 1);
    assert!(stdout(&out).contains("already shifted"), "{}", stdout(&out));
    assert!(stderr(&out).contains(&name), "{}", stderr(&out));
    // A further shift of the tree still names it.
    let further = ["--from", TO, "--to", "b:0:300000:65536", "--threads", "1"];
    let out = shift(&root, &further);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("lost: its file capability"),
        "{}",
        stderr(&out)
    );
    assert_eq!(owner(&f).0, 300000);
    assert_eq!(status_losses(&root).len(), 1);
    // Accepted: cleared, and later runs exit 0.
    let mut accept = further.to_vec();
    accept.extend(["--accept-loss", &name]);
    let out = shift(&root, &accept);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("accepted: 1"), "{}", stdout(&out));
    assert!(status_losses(&root).is_empty());
    assert_code(&shift(&root, &further), 0);
    assert!(!has_cap(&f));
}

// Killed after the chown of a setuid file with a capability, then another capability is set on
// it: the setcap wins (its capability stays, shifted like any other), and its setuid bit, taken
// by the chown and not written back, is a loss.
fn a_setcap_after_the_crash_wins_and_nothing_is_lost() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    let tree = || ten_files(0o4755, true);
    let (_t, root, f) = killed_after_a_chown(
        &tree,
        &args,
        &|p| owner(p).0 == 200000 && get_xattr(p, caps::NAME).is_none(),
        0,
    );
    // The administrator's own capability, for container root of the new range.
    let mine = cap_v3(200000);
    set_xattr(&f, caps::NAME, &mine);
    let out = shift(&root, &args);
    assert_code(&out, 1);
    assert_eq!(get_xattr(&f, caps::NAME), Some(mine), "the setcap lost");
    let err = stderr(&out);
    assert!(err.contains("lost: its setuid bit,"), "{err}");
    assert!(!err.contains("capability,"), "{err}");
}

// `--accept-loss` of a file without a recorded loss: a usage error, nothing changed.
fn accept_loss_of_a_file_with_no_loss_is_refused() {
    let (_t, root) = ten_setuid();
    let before = state(&root);
    let f = root.join("f1");
    let out = shift(
        &root,
        &[
            "--from",
            FROM,
            "--to",
            TO,
            "--accept-loss",
            f.to_str().unwrap(),
        ],
    );
    assert_one_error_line(&out, 2, "no loss of this file");
    assert_eq!(state(&root), before);
    assert!(!journal_of(&root).exists());
}

/// A container `c1` under a fresh LXCPATH: a config that maps 100000 and a rootfs of ten setuid
/// files of its root.
fn container_of_ten_setuid() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let lxcpath = tmp.path().join("lxc");
    let dir = lxcpath.join("c1");
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = dir.join("rootfs");
    make(&rootfs, true, 100000, 0o755);
    for i in 0..10 {
        make(&rootfs.join(format!("f{i}")), false, 100000, 0o4755);
    }
    std::fs::write(
        dir.join("config"),
        format!(
            "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n\
             lxc.rootfs.path = dir:{}\nlxc.uts.name = c1\n",
            rootfs.display()
        ),
    )
    .unwrap();
    (tmp, lxcpath, rootfs)
}

// A migrate killed right after a file's chown, the file then changed by hand: the next migrate
// finishes the rootfs, names the loss (exit 1) and still rewrites the config, so that the
// container's config never stays behind its rootfs; later migrates name the loss until it is
// accepted.
fn a_migrate_whose_rootfs_names_a_loss_still_moves_the_config() {
    let migrate = |lxcpath: &Path, extra: &[&str], crash: Option<u32>| {
        let mut cmd = idshift(&["migrate", "c1", "-P"]);
        cmd.arg(lxcpath)
            .args(["--to", "200000", "--progress", "never"])
            .args(extra);
        if let Some(n) = crash {
            cmd.env(CRASH, n.to_string());
        }
        run_limited(&mut cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"))
    };
    let config_names_200000 = |lxcpath: &Path| {
        std::fs::read_to_string(lxcpath.join("c1/config"))
            .unwrap()
            .contains("u 0 200000 65536")
    };
    for n in 1..200 {
        let (_t, lxcpath, rootfs) = container_of_ten_setuid();
        let out = migrate(&lxcpath, &["--threads", "1"], Some(n));
        assert_eq!(out.status.signal(), Some(9), "n={n}: {}", stderr(&out));
        let Some(f) = (0..10)
            .map(|i| rootfs.join(format!("f{i}")))
            .find(|p| owner(p).0 == 200000 && mode(p) == 0o755)
        else {
            continue;
        };
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = migrate(&lxcpath, &[], None);
        assert_names_loss(&out, &f, "its setuid bit", "a migrate");
        assert!(
            config_names_200000(&lxcpath),
            "the config stayed behind its rootfs"
        );
        let out = migrate(&lxcpath, &[], None);
        assert_names_loss(&out, &f, "its setuid bit", "a migrate");
        let out = migrate(&lxcpath, &["--accept-loss", f.to_str().unwrap()], None);
        assert_code(&out, 0);
        assert_code(&migrate(&lxcpath, &[], None), 0);
        assert_eq!(mode(&f), 0o700);
        return;
    }
    panic!("no kill point of the migrate left a file between its chown and its mode");
}

/// A tree with one loss listed: `f` (4755, its setuid bit taken by the chown of a killed run,
/// then `chmod 0700`), after the resume that listed it. Returns the tree and `f`.
fn tree_with_a_loss(args: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (t, root, f) = killed_after_a_setuid_chown(args, 0);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_code(&shift(&root, args), 1);
    (t, root, f)
}

// A setgid file without group-exec keeps its bit through a chown: `chmod g-s` after the crash
// is the administrator's, never undone (and the chown took nothing, so nothing is lost).
fn chmod_g_minus_s_after_the_crash_wins_on_setgid_without_group_exec() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    let tree = || ten_files(0o2745, false);
    let (_t, root, f) = killed_after_a_chown(&tree, &args, &|p| owner(p).0 == 200000, 0);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o745)).unwrap();
    assert_code(&shift(&root, &args), 0);
    assert_eq!(mode(&f), 0o745, "the chmod g-s after the crash was undone");
}

// Killed after a file's chown; the file is moved out of the tree before the resume, which
// therefore never sees it: what its step plan still owed is listed under its path (exit 1),
// and stays listed while it is away and once it is back, until its bit is set again by hand.
fn a_file_moved_out_before_the_resume_keeps_its_loss_listed() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    let (t, root, f) = killed_after_a_setuid_chown(&args, 0);
    let away = t.path().join("away");
    std::fs::rename(&f, &away).unwrap();
    for run in 0..2 {
        let out = shift(&root, &args);
        assert_names_loss(&out, &f, "its setuid bit", &format!("run {run}"));
        assert!(
            !journal_of(&root).exists(),
            "run {run}: the shift stays pending"
        );
    }
    std::fs::rename(&away, &f).unwrap();
    assert_code(&shift(&root, &args), 1);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
    assert_code(&shift(&root, &args), 0);
}

// The loss list is found whatever happened to it: the tree renamed (its list now has another
// name), copied with `cp -a`, or the list written by another user: the run still exits 1 and
// says why, until the loss is accepted.
fn a_renamed_copied_or_foreign_listed_tree_still_names_its_losses() {
    let args = ["--from", FROM, "--to", TO, "--threads", "1"];
    // Renamed: the tree's mark names a list that is not beside it under the new name.
    let (t, root, _f) = tree_with_a_loss(&args);
    let renamed = t.path().join("ct1");
    std::fs::rename(&root, &renamed).unwrap();
    let out = shift(&renamed, &args);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains("user.idshift.losses"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        status_json(&renamed)["losses"].as_array().map(Vec::len),
        Some(1)
    );
    let out = shift(
        &renamed,
        &[&args[..], &["--accept-loss", renamed.to_str().unwrap()]].concat(),
    );
    assert_code(&out, 0);
    assert_code(&shift(&renamed, &args), 0);
    // Copied: the copy carries the mark, not the list.
    let (t, root, _f) = tree_with_a_loss(&args);
    let copy = t.path().join("copy");
    let out = run_limited(Command::new("cp").arg("-a").arg(&root).arg(&copy), LIMIT).unwrap();
    assert_code(&out, 0);
    assert_code(&shift(&copy, &args), 1);
    assert_code(&shift(&root, &args), 1);
    // Written by another user: read all the same.
    let (_t, root, f) = tree_with_a_loss(&args);
    lchown(losses_of(&root), Some(1001), Some(1001)).unwrap();
    let out = shift(&root, &args);
    assert_code(&out, 1);
    assert!(
        stderr(&out).contains(&format!("{}: lost", f.display())),
        "{}",
        stderr(&out)
    );
}
