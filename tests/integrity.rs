//! The integrity of `idshift shift` against what happens around it (issue 8): a kill at any
//! point followed by other processes changing the tree, a new tree at a killed shift's path, a
//! stale record, rollback of a partial shift, a tree in use, a closed stdout, non-UTF-8 paths in
//! JSON, `--strict` on a nested tree, two runs at once, `DIR/` through a symlink, journals planted
//! or unreadable, and a journal that cannot be written on a full filesystem. As root.
//!
//! Every child process runs under a deadline (`run_within`), so no test can hang.
// The in-use test forks a child that chroots into the tree (async-signal-safe calls only).
#![allow(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(
            crash_then_tree_changed_then_rerun_matches_uninterrupted,
            Need::Root
        ),
        trial!(
            crash_then_tree_changed_then_rerun_with_overlapping_ranges,
            Need::Root
        ),
        trial!(
            new_tree_at_a_killed_shifts_path_is_shifted_and_the_old_journal_moved_aside,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            stale_record_does_not_make_the_shift_a_noop,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            partial_shift_is_rolled_back_by_the_exact_reverse,
            Need::Root,
            Need::ScratchXattrs,
            Need::ScratchImmutable
        ),
        trial!(
            partial_shift_is_finished_after_chattr_minus_i,
            Need::Root,
            Need::ScratchXattrs,
            Need::ScratchImmutable
        ),
        trial!(
            tree_in_use_is_refused_unless_forced,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            exec_rootfs_on_a_tree_in_use_is_refused,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            closed_stdout_stops_printing_not_the_shift,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            non_utf8_paths_are_escaped_in_json,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            names_with_control_characters_never_reach_the_terminal_raw,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(strict_shifts_every_inode_of_a_nested_tree, Need::Root),
        trial!(
            two_concurrent_identical_runs_with_overlapping_ranges,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            trailing_slash_through_a_symlink_and_dot_are_refused,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            journal_planted_by_another_user_cannot_make_files_setuid,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            journal_that_is_a_symlink_to_dev_zero_does_not_hang_or_eat_memory,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            journal_that_is_a_fifo_does_not_hang,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            pending_xattr_naming_dev_zero_does_not_hang,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            journal_write_failing_on_a_full_filesystem,
            Need::Root,
            Need::ScratchXattrs,
            Need::LoopExt4
        ),
        trial!(
            a_finished_inode_never_gets_back_what_it_lost_later,
            Need::Root
        ),
        trial!(
            the_reverse_of_a_completed_shift_is_not_a_rollback,
            Need::Root
        ),
        trial!(
            a_rollback_leaves_files_created_since_the_shift_began,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            overlapping_ranges_judge_each_id_on_its_own,
            Need::Root,
            Need::ScratchXattrs,
            Need::Tool("setfacl")
        ),
        trial!(
            a_forward_resume_after_a_killed_rollback_uses_its_records,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_completed_rollback_run_again_and_an_untouched_tree_do_not_shift_back,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            a_capability_is_not_restored_onto_a_file_changed_after_the_chown,
            Need::Root
        ),
        trial!(what_was_removed_before_the_chown_stays_removed, Need::Root),
        trial!(
            a_killed_rollback_run_again_restores_everything,
            Need::Root,
            Need::ScratchXattrs
        ),
    ])
}

const MAP: &str = "b:0:100000:65536";
const CRASH: &str = "IDSHIFT_CRASH_AFTER_STEPS";
/// How long any one child may run before it is killed and the test fails.
const LIMIT: Duration = Duration::from_secs(60);
/// The bound on commands that must not hang on a strange journal.
const SHORT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Running children under a deadline.

/// Runs `cmd` with stdin closed and both outputs captured, in a process group of its own;
/// `Err` (with what it printed) when it did not end within `limit` and was killed.
fn run_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    run_limited(cmd, limit)
}

/// `run_within(cmd, LIMIT)`, failing the test on a timeout.
#[track_caller]
fn run_ok(cmd: &mut Command) -> Output {
    run_within(cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"))
}

/// `idshift shift DIR ARGS --progress never` (DIR passed as raw bytes).
fn shift_cmd(dir: &Path, rest: &[&str]) -> Command {
    let mut cmd = idshift(&["shift"]);
    cmd.arg(dir).args(rest).args(["--progress", "never"]);
    cmd
}

#[track_caller]
fn shift(dir: &Path, rest: &[&str]) -> Output {
    run_ok(&mut shift_cmd(dir, rest))
}

fn status_cmd(dir: &Path, rest: &[&str]) -> Command {
    let mut cmd = idshift(&["status"]);
    cmd.arg(dir).args(rest);
    cmd
}

/// idshift with its address space capped at 2 GiB (through `sh -c 'ulimit -v'`, which then
/// execs it: same pid), so that reading an endless journal fails instead of eating the machine.
fn idshift_capped(args: &[&OsStr]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" \"$@\"")
        .arg(bin())
        .args(args)
        .current_dir("/");
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

fn json(out: &Output) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", describe(out)))
}

// ---------------------------------------------------------------------------------------------
// Checks that go on after a failure, so that one run names every broken promise.

#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    #[track_caller]
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let line = std::panic::Location::caller().line();
            let mut msg = what();
            if msg.len() > 2000 {
                let mut cut = 2000;
                while !msg.is_char_boundary(cut) {
                    cut -= 1;
                }
                msg.truncate(cut);
                msg += " …";
            }
            self.0.push(format!("line {line}: {msg}"));
        }
    }

    #[track_caller]
    fn code(&mut self, out: &Output, code: i32, what: &str) {
        self.check(out.status.code() == Some(code), || {
            format!("{what}: wanted exit {code}; {}", describe(out))
        });
    }

    /// Runs an asserting helper (`assert_shifted`, …) and records its panic as a failed check.
    #[track_caller]
    fn holds(&mut self, what: &str, f: impl FnOnce()) {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            self.check(false, || format!("{what}: {msg}"));
        }
    }

    fn done(self) {
        if !self.0.is_empty() {
            panic!(
                "{} check(s) failed:\n- {}",
                self.0.len(),
                self.0.join("\n- ")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Trees.

fn make_file(path: &Path, (uid, gid): (u32, u32), mode: u32) {
    std::fs::write(path, b"new\n").unwrap();
    lchown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn make_dir(path: &Path, (uid, gid): (u32, u32), mode: u32) {
    std::fs::create_dir(path).unwrap();
    lchown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `n` files `f0…` in a new directory, owned as `owner(i)` says.
fn add_files(dir: &Path, n: u32, owner: impl Fn(u32) -> (u32, u32)) {
    std::fs::create_dir(dir).unwrap();
    for i in 0..n {
        let p = dir.join(format!("f{i}"));
        std::fs::write(&p, b"x").unwrap();
        let (u, g) = owner(i);
        lchown(&p, Some(u), Some(g)).unwrap();
    }
}

/// Every path under `root` (itself first), not following symlinks; read through paths, by
/// the test itself, independently of idshift.
fn all_paths(root: &Path) -> Vec<PathBuf> {
    let mut v = vec![root.to_path_buf()];
    let mut i = 0;
    while i < v.len() {
        let p = v[i].clone();
        i += 1;
        if std::fs::symlink_metadata(&p).unwrap().file_type().is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            v.extend(names);
        }
    }
    v
}

/// The names in `dir` that look like a journal (`*idshift-journal*`).
fn journals(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("idshift-journal"))
        .collect();
    v.sort();
    v
}

fn chattr(flag: &str, path: &Path) -> bool {
    run_within(Command::new("chattr").arg(flag).arg(path), LIMIT).is_ok_and(|o| o.status.success())
}

/// Files made immutable (`chattr +i`) until `release` or drop, so that a failing test does
/// not leave undeletable files behind.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// `None` (with every flag taken back) when chattr +i does not work here.
    fn new(paths: &[PathBuf]) -> Option<Immutable> {
        let guard = Immutable(paths.to_vec());
        paths.iter().all(|p| chattr("+i", p)).then_some(guard)
    }

    fn release(&mut self) {
        for p in self.0.drain(..) {
            chattr("-i", &p);
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        self.release();
    }
}

fn snapshot_diff(want: &BTreeMap<PathBuf, Meta>, got: &BTreeMap<PathBuf, Meta>) -> Vec<String> {
    let mut diff: Vec<String> = want
        .iter()
        .filter(|(p, m)| got.get(*p) != Some(m))
        .map(|(p, m)| format!("{}: want {m:?}\n   got {:?}", p.display(), got.get(p)))
        .collect();
    diff.extend(
        got.keys()
            .filter(|p| !want.contains_key(*p))
            .map(|p| format!("{}: not wanted, got {:?}", p.display(), got[p])),
    );
    diff
}

// ---------------------------------------------------------------------------------------------
// 1. Killed at every step, then the tree is changed by others, then the same command again.

/// The owners of what the mutations create: FROM ids.
struct NewOwners {
    file: (u32, u32),
    dir: (u32, u32),
    dir_file: (u32, u32),
}

/// What other processes do to a tree between a killed shift and the next run: the same on an
/// unshifted and on a partly shifted tree. Plain path operations, as root.
fn mutate(root: &Path, owners: &NewOwners) {
    set_mode(&root.join("etc/shadow"), 0o600);
    let now = SystemTime::now();
    std::fs::File::options()
        .write(true)
        .open(root.join("etc/notes"))
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_accessed(now)
                .set_modified(now),
        )
        .unwrap();
    make_file(&root.join("etc/new-after-crash"), owners.file, 0o644);
    std::fs::remove_file(root.join("etc/zero-mode")).unwrap();
    std::fs::rename(root.join("etc/hard"), root.join("etc/hard-renamed")).unwrap();
    make_dir(&root.join("newdir"), owners.dir, 0o755);
    make_file(&root.join("newdir/file"), owners.dir_file, 0o644);
}

/// Runs `args` killed before its Nth change for N = 1, 2, … until a run completes; after each
/// kill the tree is mutated and the same command run again, and the tree must equal an
/// uninterrupted run over the mutated tree. Returns the N of the complete run.
fn crash_mutate_resume(prepare: &dyn Fn(&Path), args: &[&str], owners: &NewOwners) -> u32 {
    let (_t1, reference) = sample();
    prepare(&reference);
    mutate(&reference, owners);
    assert_code(&shift(&reference, args), 0);
    let want = without_times_and_inodes(&snapshot(&reference));
    let (_t2, plain) = sample();
    prepare(&plain);
    assert_code(&shift(&plain, args), 0);
    let want_plain = without_times_and_inodes(&snapshot(&plain));
    let (_t3, complete, n) = each_kill_point(prepare, args, &mut |root, n| {
        mutate(root, owners);
        let again = shift(root, args);
        assert_eq!(
            again.status.code(),
            Some(0),
            "killed before change {n}, tree mutated, same command again: {}",
            describe(&again)
        );
        let got = without_times_and_inodes(&snapshot(root));
        let diff = snapshot_diff(&want, &got);
        assert!(
            diff.is_empty(),
            "killed before change {n}, tree mutated, rerun: the tree differs from an \
             uninterrupted run over the mutated tree:\n{}",
            diff.join("\n")
        );
        assert!(!journal_of(root).exists(), "journal left after N={n}");
    });
    assert_same_tree(
        &without_times_and_inodes(&snapshot(&complete)),
        &want_plain,
        &format!("uninterrupted run at N={n}"),
    );
    n
}

fn crash_then_tree_changed_then_rerun_matches_uninterrupted() {
    let Some(_) = require!(Root) else { return };
    let owners = NewOwners {
        file: (0, 0),
        dir: (0, 0),
        dir_file: (1000, 1000),
    };
    let n = crash_mutate_resume(&|_| {}, &[MAP], &owners);
    eprintln!("killed, mutated and resumed at {} points", n - 1);
    assert!(n > 30, "only {n} steps: the hook is not reached");
}

fn crash_then_tree_changed_then_rerun_with_overlapping_ranges() {
    let Some(_) = require!(Root) else { return };
    let prepare = |root: &Path| assert_code(&shift(root, &[MAP]), 0);
    // FROM b:0:100000 → TO b:0:100007: ids 100007… lie in both host ranges, so they alone
    // cannot tell a new file at a FROM id from a shifted one.
    let owners = NewOwners {
        file: (100010, 100010),
        dir: (100000, 100000),
        dir_file: (100007, 100007),
    };
    let n = crash_mutate_resume(
        &prepare,
        &["--from", MAP, "--to", "b:0:100007:65536"],
        &owners,
    );
    eprintln!("killed, mutated and resumed at {} points", n - 1);
}

// ---------------------------------------------------------------------------------------------
// 2. A new tree where a killed shift's tree was: its journal is moved aside, not applied.

fn new_tree_at_a_killed_shifts_path_is_shifted_and_the_old_journal_moved_aside() {
    let Some(_) = require!(Root) else { return };
    let (tmp, root) = sample();
    let out = run_ok(shift_cmd(&root, &[MAP, "--threads", "1"]).env(CRASH, "5"));
    assert_eq!(
        out.status.signal(),
        Some(9),
        "not killed at step 5: {}",
        describe(&out)
    );
    assert!(
        journal_of(&root).exists(),
        "the run killed at step 5 left no journal to test with"
    );
    std::fs::remove_dir_all(&root).unwrap();
    build_sample(&root);
    let before = snapshot(&root);
    let out = shift(&root, &[MAP]);
    let mut c = Checks::default();
    c.code(&out, 0, "shift of the new tree");
    c.holds("the new tree fully shifted", || {
        assert_shifted(&before, &snapshot(&root), &plus(100000))
    });
    c.check(stderr(&out).lines().any(|l| l.contains("journal")), || {
        format!(
            "stderr does not mention the old journal: {}",
            describe(&out)
        )
    });
    c.check(!journal_of(&root).exists(), || {
        "the old journal is still at its place".into()
    });
    let names = journals(tmp.path());
    c.check(
        names
            .iter()
            .any(|n| n.starts_with(".rootfs.idshift-journal.")),
        || format!("no .rootfs.idshift-journal.<something> beside the tree: {names:?}"),
    );
    c.done();
}

// ---------------------------------------------------------------------------------------------
// 3. A record that the inodes contradict is never a reason to skip the work.

fn stale_record_does_not_make_the_shift_a_noop() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    assert_code(&shift(&root, &[MAP]), 0);
    assert!(get_xattr(&root, c"user.idshift.map").is_some(), "no record");
    // Undo the shift behind idshift's back (as fuidshift or a chown -R would), keeping modes.
    let back = |id: u32| {
        if (100000..165536).contains(&id) {
            id - 100000
        } else {
            id
        }
    };
    for p in all_paths(&root) {
        let m = std::fs::symlink_metadata(&p).unwrap();
        lchown(&p, Some(back(m.uid())), Some(back(m.gid()))).unwrap();
        if !m.file_type().is_symlink() {
            set_mode(&p, m.mode() & 0o7777);
        }
    }
    assert_eq!(owner(&root.join("bin/su")), (0, 0));
    // `status` says the record is contradicted by the tree.
    let st = run_ok(&mut status_cmd(&root, &[]));
    assert_code(&st, 0);
    assert!(
        stdout(&st).contains("(contradicted: "),
        "status does not report the stale record: {}",
        describe(&st)
    );
    let out = shift(&root, &[MAP]);
    assert_code(&out, 0);
    assert!(
        stderr(&out).contains("another tool"),
        "the shift does not say the record was stale: {}",
        describe(&out)
    );
    let left: Vec<String> = all_paths(&root)
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            (m.uid() < 65536 || m.gid() < 65536)
                .then(|| format!("{} {}:{}", p.display(), m.uid(), m.gid()))
        })
        .collect();
    assert!(
        left.is_empty(),
        "inodes left in the host range although the record claimed otherwise ({} of them): \
         {left:?}\n{}",
        left.len(),
        describe(&out)
    );
    let su = std::fs::symlink_metadata(root.join("bin/su")).unwrap();
    assert_eq!((su.uid(), su.mode() & 0o7777), (100000, 0o4755));
}

// ---------------------------------------------------------------------------------------------
// 4, 5. A partial shift (an immutable file): rolled back by the exact reverse, or finished.

fn partial_shift_is_rolled_back_by_the_exact_reverse() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    let Some(mut stuck) = Immutable::new(&[root.join("bin/su")]) else {
        skip(format!("chattr +i is not supported on {}", root.display()));
    };
    let before = snapshot(&root);
    let out = shift(&root, &[MAP]);
    stuck.release();
    assert_code(&out, 1);
    let mut c = Checks::default();
    let st = run_ok(&mut status_cmd(&root, &[]));
    let text = stdout(&st);
    c.check(text.to_lowercase().contains("roll"), || {
        format!("status does not offer the rollback:\n{text}")
    });
    c.check(text.matches("idshift shift").count() >= 2, || {
        format!("status does not give both commands (finish and roll back):\n{text}")
    });
    let out = shift(&root, &["-r", MAP]);
    c.code(&out, 0, "the exact reverse of the pending shift");
    c.holds("every inode back to its original state", || {
        assert_same_tree(&snapshot(&root), &before, "after rollback vs before")
    });
    c.check(!journal_of(&root).exists(), || {
        "a journal is left after the rollback".into()
    });
    let st = run_ok(&mut status_cmd(&root, &[]));
    c.check(stdout(&st).contains("unfinished shift: none"), || {
        format!("status after the rollback: {}", describe(&st))
    });
    c.done();
}

fn partial_shift_is_finished_after_chattr_minus_i() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    // bin/su takes several steps (journaled); etc/notes only a chown (one step, so it is
    // trusted by ctime today): `chattr -i` moves both ctimes past the shift's start.
    let Some(mut stuck) = Immutable::new(&[root.join("bin/su"), root.join("etc/notes")]) else {
        skip(format!("chattr +i is not supported on {}", root.display()));
    };
    let before = snapshot(&root);
    let out = shift(&root, &[MAP]);
    stuck.release();
    assert_code(&out, 1);
    let out = shift(&root, &[MAP]);
    assert_code(&out, 0);
    let after = snapshot(&root);
    let su = &after[Path::new("bin/su")];
    assert_eq!((su.uid, su.mode), (100000, 0o4755), "bin/su");
    assert_eq!(
        owner(&root.join("etc/notes")),
        (100000, 100000),
        "etc/notes"
    );
    assert_shifted(&before, &after, &plus(100000));
}

// ---------------------------------------------------------------------------------------------
// 6. A tree in use (a process's root or working directory in it) is refused unless --force.

/// A forked child whose root directory is `dir`; killed and reaped on drop.
struct Chrooted(nix::unistd::Pid);

impl Chrooted {
    fn start(dir: &Path) -> Chrooted {
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: the test harness is multithreaded, so the child only makes async-signal-safe
        // calls (close_range, chroot, chdir, pause, _exit) on memory prepared before the fork,
        // and never returns.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => unsafe {
                libc::close_range(0, libc::c_uint::MAX, 0);
                if libc::chroot(c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            },
            nix::unistd::ForkResult::Parent { child } => {
                let guard = Chrooted(child);
                let want = dir.canonicalize().unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::fs::read_link(format!("/proc/{child}/root")).ok() != Some(want.clone()) {
                    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                    let w = waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid");
                    assert!(w == WaitStatus::StillAlive, "the chroot child ended: {w:?}");
                    assert!(
                        Instant::now() < deadline,
                        "the child did not chroot in time"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                guard
            }
        }
    }
}

impl Drop for Chrooted {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}

/// A spawned child, killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn refused_in_use(c: &mut Checks, out: &Output, pid: u32, what: &str) {
    c.code(out, 3, what);
    let err = stderr(out);
    c.check(
        (err.contains("in use") || err.contains("runs in")) && err.contains(&pid.to_string()),
        || format!("{what}: stderr should say 'in use' and name pid {pid}: {err}"),
    );
    c.check(err.lines().count() == 1, || {
        format!("{what}: stderr should be one line: {err}")
    });
}

fn tree_in_use_is_refused_unless_forced() {
    let Some(_) = require!(Root) else { return };
    let mut c = Checks::default();
    {
        let (_tmp, root) = sample();
        let before = snapshot(&root);
        let child = Chrooted::start(&root);
        let pid = child.0.as_raw() as u32;
        let out = shift(&root, &[MAP]);
        refused_in_use(&mut c, &out, pid, "a process chrooted into the tree");
        c.check(snapshot(&root) == before, || {
            "the tree changed although the shift was refused".into()
        });
        c.check(!journal_of(&root).exists(), || {
            "a journal was left by a refused shift".into()
        });
        let out = shift(&root, &[MAP, "--force"]);
        c.code(&out, 0, "--force");
        drop(child);
    }
    {
        let (_tmp, root) = sample();
        let before = snapshot(&root);
        let child = Reaped(
            Command::new("sleep")
                .arg("30")
                .current_dir(root.join("etc"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        let out = shift(&root, &[MAP]);
        refused_in_use(
            &mut c,
            &out,
            pid,
            "a process whose working directory is in the tree",
        );
        c.check(snapshot(&root) == before, || {
            "the tree changed although the shift was refused".into()
        });
        drop(child);
    }
    c.done();
}

// `exec --rootfs` runs the same check: a rootfs in use is refused with 125 before anything
// starts.
fn exec_rootfs_on_a_tree_in_use_is_refused() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    let child = Chrooted::start(&root);
    let pid = child.0.as_raw() as u32;
    let marker = root.join("etc/exec-ran");
    let cmd = format!("touch {}", marker.display());
    let out = run_ok(&mut idshift(&[
        "exec",
        "-m",
        MAP,
        "--rootfs",
        root.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &cmd,
    ]));
    assert_code(&out, 125);
    let err = stderr(&out);
    assert!(
        err.contains("in use") && err.contains(&pid.to_string()) && err.lines().count() == 1,
        "{err}"
    );
    assert!(!marker.exists());
    drop(child);
}

// ---------------------------------------------------------------------------------------------
// 7. A closed stdout stops the printing, never the shift.

fn closed_stdout_stops_printing_not_the_shift() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    // Far more -v output than a pipe holds (64 KiB), so writes after the close do fail.
    add_files(&root.join("var/many"), 3000, |i| (i % 1000, i % 1000));
    let before = snapshot(&root);
    let mut child = shift_cmd(&root, &["-v", MAP])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = drain(child.stderr.take().unwrap());
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        let n = reader.read_line(&mut line).ok();
        let _ = tx.send((n, line));
        // The reader, and with it the pipe's read end, is dropped here.
    });
    let first = rx.recv_timeout(LIMIT);
    let status = wait_within(&mut child, LIMIT);
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    let (n, line) = first.expect("no first line of -v output in time");
    assert!(
        n.is_some_and(|n| n > 0),
        "no -v line printed; stderr: {err}"
    );
    eprintln!("first -v line: {line}");
    let status = status.expect("the shift did not end in time (killed)");
    assert_eq!(
        status.code(),
        Some(0),
        "{status:?} after its stdout was closed; stderr: {err}"
    );
    assert_shifted(&before, &snapshot(&root), &plus(100000));
}

// ---------------------------------------------------------------------------------------------
// 8. Non-UTF-8 paths in JSON: escaped as \xNN, never a failure.

fn non_utf8_paths_are_escaped_in_json() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    make_file(
        &root.join(OsStr::from_bytes(b"etc/bad\xffname")),
        (70001, 70001),
        0o644,
    );
    make_file(
        &root.join(OsStr::from_bytes(b"etc/also\xfebad")),
        (0, 0),
        0o644,
    );
    let before = snapshot(&root);
    let out = shift(&root, &[MAP, "--json"]);
    let mut c = Checks::default();
    c.code(&out, 0, "shift --json");
    match json(&out) {
        Err(e) => c.check(false, || e),
        Ok(s) => {
            let entry = s["outliers"].as_array().and_then(|a| {
                a.iter()
                    .find(|o| o["kind"] == "uid" && o["id"] == 70001)
                    .cloned()
            });
            c.check(
                entry.as_ref().is_some_and(|o| {
                    o["example"]
                        .as_str()
                        .is_some_and(|e| e.ends_with("bad\\xffname"))
                }),
                || format!("outlier uid 70001's example is not '…bad\\xffname': {entry:?}"),
            );
        }
    }
    c.holds("the tree shifted", || {
        assert_shifted(&before, &snapshot(&root), &plus(100000))
    });
    let st = run_ok(&mut status_cmd(&root, &["--json"]));
    c.code(&st, 0, "status --json");
    if let Err(e) = json(&st) {
        c.check(false, || e);
    }
    c.done();
}

// A container names files to forge a line ("a\nidshift: ...") or to send escape sequences to
// root's terminal (ESC, a C1 CSI): `shift -v`, the outlier examples, the errors and `status`
// print them as `\xNN`, the same in text and JSON.
fn names_with_control_characters_never_reach_the_terminal_raw() {
    let (_tmp, root) = sample();
    let forged = b"etc/ok\nidshift: all 0 inodes restored".as_slice();
    let names: [&[u8]; 3] = [forged, b"etc/esc\x1b[2J\x07", "etc/csi\u{9b}31m".as_bytes()];
    // Two are shifted (`-v` lines), one is an outlier (the summary's example).
    for (name, owner) in names.into_iter().zip([(0, 0), (7, 7), (70001, 70001)]) {
        make_file(&root.join(OsStr::from_bytes(name)), owner, 0o644);
    }
    let raw = |text: &str| text.chars().any(|c| c.is_control() && c != '\n');
    let mut c = Checks::default();
    let out = shift(&root, &[MAP, "-v"]);
    c.code(&out, 0, "shift -v");
    let (text, err) = (stdout(&out), stderr(&out));
    c.check(!raw(&text) && !raw(&err), || {
        format!("a control character printed raw:\n{text}{err}")
    });
    c.check(
        !text
            .lines()
            .chain(err.lines())
            .any(|l| l.starts_with("idshift: all 0")),
        || format!("a file name forged a line:\n{text}"),
    );
    c.check(
        text.contains("etc/ok\\x0aidshift: all 0 inodes restored"),
        || format!("the newline is not shown as \\x0a:\n{text}"),
    );
    c.check(
        text.contains("etc/esc\\x1b[2J\\x07") && text.contains("etc/csi\\xc2\\x9b31m"),
        || format!("ESC, BEL and C1 are not shown as \\xNN:\n{text}"),
    );
    let json = run_ok(&mut shift_cmd(&root, &["-r", MAP, "--json"]));
    c.code(&json, 0, "shift -r --json");
    // JSON escapes the escape's backslash once more: the outlier's example, `etc/csi\xc2\x9b31m`.
    c.check(stdout(&json).contains(r#"etc/csi\\xc2\\x9b31m""#), || {
        format!("JSON does not carry the same escape: {}", stdout(&json))
    });
    let st = run_ok(&mut status_cmd(&root, &["--map", MAP]));
    c.check(!raw(&stdout(&st)), || {
        format!("status printed a control character: {}", stdout(&st))
    });
    c.done();
}

// ---------------------------------------------------------------------------------------------
// 9. --strict checks the whole tree first and then shifts the whole tree.

fn strict_shifts_every_inode_of_a_nested_tree() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    make_dir(&root, (0, 0), 0o755);
    let mut dir = root.clone();
    for name in ["a", "b", "c"] {
        dir = dir.join(name);
        make_dir(&dir, (0, 0), 0o755);
        for i in 0..=10 {
            make_file(&dir.join(format!("f{i}")), (i, i), 0o644);
        }
    }
    let n = all_paths(&root).len() as u64;
    let out = shift(&root, &[MAP, "--strict", "--json"]);
    assert_code(&out, 0);
    let s = json(&out).unwrap_or_else(|e| panic!("{e}"));
    let left: Vec<String> = all_paths(&root)
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            (m.uid() < 100000 || m.gid() < 100000)
                .then(|| format!("{} {}:{}", p.display(), m.uid(), m.gid()))
        })
        .collect();
    assert_eq!(
        s["inodes"], n,
        "inodes scanned by the shift; left: {left:?}"
    );
    assert!(left.is_empty(), "not shifted: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// 10. Two identical runs at once, overlapping ranges: one waits or is refused, never both act.

fn two_concurrent_identical_runs_with_overlapping_ranges() {
    let Some(_) = require!(Root) else { return };
    let args = ["--from", MAP, "--to", "b:0:100007:65536"];
    let tree = || {
        let (t, root) = sample();
        add_files(&root.join("var/many"), 1000, |i| (i % 300, i % 300));
        assert_code(&shift(&root, &[MAP]), 0);
        (t, root)
    };
    let (_t, reference) = tree();
    assert_code(&shift(&reference, &args), 0);
    let want = without_times_and_inodes(&snapshot(&reference));
    let mut c = Checks::default();
    for trial in 1..=10 {
        let (_t, root) = tree();
        let spawn = || {
            shift_cmd(&root, &args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut kids = [spawn(), spawn()];
        let errs = kids.each_mut().map(|k| drain(k.stderr.take().unwrap()));
        let pids = [kids[0].id(), kids[1].id()];
        let statuses = kids.each_mut().map(|k| wait_within(k, LIMIT));
        let errs = errs.map(|e| String::from_utf8_lossy(&e.join().unwrap()).into_owned());
        for i in 0..2 {
            let other = pids[1 - i];
            match statuses[i].and_then(|s| s.code()) {
                Some(0) => {}
                Some(3) => c.check(errs[i].contains(&other.to_string()), || {
                    format!(
                        "trial {trial}: refused run does not name the other (pid {other}): {}",
                        errs[i]
                    )
                }),
                _ => c.check(false, || {
                    format!(
                        "trial {trial}: run {i} ended with {:?} (wanted 0, or 3 for 'another run \
                         holds the tree'); stderr: {}",
                        statuses[i], errs[i]
                    )
                }),
            }
        }
        let got = without_times_and_inodes(&snapshot(&root));
        let diff = snapshot_diff(&want, &got);
        c.check(diff.is_empty(), || {
            format!(
                "trial {trial}: the tree differs from one uninterrupted run ({} paths), e.g. {}",
                diff.len(),
                diff.iter().take(3).cloned().collect::<Vec<_>>().join("\n")
            )
        });
        c.check(!journal_of(&root).exists(), || {
            format!("trial {trial}: a journal is left")
        });
    }
    c.done();
}

// ---------------------------------------------------------------------------------------------
// 11. DIR is the real directory: `link/` and `dir/.` are refused; `dir/` is `dir`.

fn trailing_slash_through_a_symlink_and_dot_are_refused() {
    let Some(_) = require!(Root) else { return };
    let mut c = Checks::default();
    {
        let (tmp, root) = sample();
        std::os::unix::fs::symlink("rootfs", tmp.path().join("link")).unwrap();
        let before = snapshot(&root);
        let mut arg = tmp.path().join("link").into_os_string();
        arg.push("/");
        let out = shift(Path::new(&arg), &[MAP]);
        c.code(&out, 2, "shift TMP/link/");
        let err = stderr(&out);
        c.check(err.contains("symlink") && err.lines().count() == 1, || {
            format!("TMP/link/: wanted one line naming the symlink: {err}")
        });
        c.check(snapshot(&root) == before, || {
            "TMP/link/: the tree was changed through the symlink".into()
        });
        let names = journals(tmp.path());
        c.check(names.is_empty(), || {
            format!("TMP/link/: journal left beside the tree: {names:?}")
        });
        let inside: Vec<_> = snapshot(&root)
            .into_keys()
            .filter(|p| p.to_string_lossy().contains("journal"))
            .collect();
        c.check(inside.is_empty(), || {
            format!("TMP/link/: journal inside the tree: {inside:?}")
        });
    }
    {
        let (tmp, root) = sample();
        let before = snapshot(&root);
        let mut arg = root.clone().into_os_string();
        arg.push("/");
        let slash = PathBuf::from(arg);
        // Killed midway, so that the journal's place can be seen.
        let out = run_ok(shift_cmd(&slash, &[MAP, "--threads", "1"]).env(CRASH, "3"));
        c.check(out.status.signal() == Some(9), || {
            format!(
                "TMP/rootfs/ with {CRASH}=3 was not killed: {}",
                describe(&out)
            )
        });
        let names = journals(tmp.path());
        c.check(names == [".rootfs.idshift-journal"], || {
            format!("TMP/rootfs/: the journal is not TMP/.rootfs.idshift-journal: {names:?}")
        });
        let keys: Vec<_> = snapshot(&root).into_keys().collect();
        c.check(keys == before.keys().cloned().collect::<Vec<_>>(), || {
            "TMP/rootfs/: something was created inside the tree".into()
        });
        let out = shift(&slash, &[MAP]);
        c.code(&out, 0, "shift TMP/rootfs/ (finishing)");
        c.holds("TMP/rootfs/ shifted", || {
            assert_shifted(&before, &snapshot(&root), &plus(100000))
        });
        let names = journals(tmp.path());
        c.check(names.is_empty(), || {
            format!("TMP/rootfs/: journal left after finishing: {names:?}")
        });
    }
    {
        let (tmp, root) = sample();
        let before = snapshot(&root);
        let out = shift(&root.join("."), &[MAP]);
        c.code(&out, 2, "shift TMP/rootfs/.");
        c.check(snapshot(&root) == before, || {
            "TMP/rootfs/.: the tree was changed".into()
        });
        let names = journals(tmp.path());
        c.check(names.is_empty(), || {
            format!("TMP/rootfs/.: journal left beside the tree: {names:?}")
        });
    }
    c.done();
}

// ---------------------------------------------------------------------------------------------
// 12. Journals that are not idshift's own: planted by another user, or not regular files.

fn test_user_ids() -> (u32, u32) {
    nix::unistd::User::from_name("idshift-test")
        .ok()
        .flatten()
        .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
        .unwrap_or((65534, 65534))
}

fn journal_planted_by_another_user_cannot_make_files_setuid() {
    let Some(_) = require!(Root) else { return };
    let mut c = Checks::default();
    // Version 2 is the format the brief names; version 1 is today's exact format (which today's
    // code parses, and so applies).
    for magic in ["idshift-journal 2", "idshift-journal 1"] {
        let (_tmp, root) = sample();
        let before = snapshot(&root);
        let wall = std::fs::symlink_metadata(root.join("bin/wall")).unwrap();
        let journal = journal_of(&root);
        std::fs::write(
            &journal,
            format!(
                "{magic}\nfrom host\nto u:0:100000:65536 g:0:100000:65536\nsince 0\n\
                 {} {} 0 0 104755 - - -\n",
                wall.dev(),
                wall.ino()
            ),
        )
        .unwrap();
        let (uid, gid) = test_user_ids();
        lchown(&journal, Some(uid), Some(gid)).unwrap();
        set_xattr(
            &root,
            c"user.idshift.pending",
            journal.as_os_str().as_bytes(),
        );
        let out = shift(&root, &[MAP]);
        let after = snapshot(&root);
        let err = stderr(&out);
        match out.status.code() {
            Some(3) => {
                c.check(
                    err.lines().count() == 1
                        && err.contains(".rootfs.idshift-journal")
                        && (err.contains("trust") || err.contains("owned")),
                    || format!("{magic}: refusal should be one line naming the journal: {err}"),
                );
                c.check(after == before, || {
                    format!("{magic}: refused, yet the tree changed")
                });
            }
            Some(0) => {
                c.check(err.contains("journal"), || {
                    format!("{magic}: proceeded without a warning about the journal: {err}")
                });
                c.holds(&format!("{magic}: proceeded normally"), || {
                    assert_shifted(&before, &after, &plus(100000))
                });
            }
            _ => c.check(false, || {
                format!(
                    "{magic}: wanted exit 3 (refused) or 0 (with a warning); {}",
                    describe(&out)
                )
            }),
        }
        for (p, a) in &after {
            let Some(b) = before.get(p) else { continue };
            c.check(a.mode & 0o4000 == 0 || b.mode & 0o4000 != 0, || {
                format!(
                    "{magic}: {} became setuid ({:o}, owner {})",
                    p.display(),
                    a.mode,
                    a.uid
                )
            });
            c.check(a.uid != 0 || b.uid == 0, || {
                format!("{magic}: {} became owned by uid 0", p.display())
            });
        }
    }
    c.done();
}

/// Runs a command that must end within `SHORT` with a bounded address space.
fn capped(c: &mut Checks, args: &[&OsStr], what: &str) -> Option<Output> {
    match run_within(&mut idshift_capped(args), SHORT) {
        Ok(out) => Some(out),
        Err(e) => {
            c.check(false, || format!("{what}: {e}"));
            None
        }
    }
}

/// `status DIR` ends within 10 s with 0 or 1 (optionally naming the journal); `shift DIR MAP`
/// ends within 10 s and either shifts normally or changes nothing.
fn journal_must_not_hang(c: &mut Checks, root: &Path, what: &str, must_name_journal: bool) {
    let before = snapshot(root);
    if let Some(out) = capped(c, &["status".as_ref(), root.as_os_str()], what) {
        c.check(matches!(out.status.code(), Some(0 | 1)), || {
            format!("{what}: status: {}", describe(&out))
        });
        if must_name_journal {
            let all = stdout(&out) + &stderr(&out);
            c.check(all.lines().any(|l| l.contains("journal")), || {
                format!("{what}: status names no journal: {}", describe(&out))
            });
        }
    }
    let args = [
        "shift".as_ref(),
        root.as_os_str(),
        MAP.as_ref(),
        "--progress".as_ref(),
        "never".as_ref(),
    ];
    if let Some(out) = capped(c, &args, what) {
        let after = snapshot(root);
        match out.status.code() {
            Some(0) => c.holds(&format!("{what}: shift proceeded normally"), || {
                assert_shifted(&before, &after, &plus(100000))
            }),
            Some(_) => c.check(after == before, || {
                format!(
                    "{what}: shift failed yet changed the tree: {}",
                    describe(&out)
                )
            }),
            None => c.check(false, || format!("{what}: shift: {}", describe(&out))),
        }
    }
}

fn journal_that_is_a_symlink_to_dev_zero_does_not_hang_or_eat_memory() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    std::os::unix::fs::symlink("/dev/zero", journal_of(&root)).unwrap();
    let mut c = Checks::default();
    journal_must_not_hang(&mut c, &root, "journal -> /dev/zero", true);
    c.done();
}

fn journal_that_is_a_fifo_does_not_hang() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    nix::unistd::mkfifo(
        &journal_of(&root),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let mut c = Checks::default();
    journal_must_not_hang(&mut c, &root, "journal is a FIFO", false);
    c.done();
}

fn pending_xattr_naming_dev_zero_does_not_hang() {
    let Some(_) = require!(Root) else { return };
    let (_tmp, root) = sample();
    set_xattr(&root, c"user.idshift.pending", b"/dev/zero");
    let mut c = Checks::default();
    if let Some(out) = capped(
        &mut c,
        &["status".as_ref(), root.as_os_str()],
        "pending xattr -> /dev/zero",
    ) {
        c.check(matches!(out.status.code(), Some(0 | 1)), || {
            format!("pending xattr -> /dev/zero: status: {}", describe(&out))
        });
    }
    c.done();
}

// ---------------------------------------------------------------------------------------------
// 13. A journal that cannot be written (full filesystem): nothing unrecorded is changed.

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let ok = run_within(Command::new("umount").arg(&self.0), LIMIT)
            .is_ok_and(|o| o.status.success());
        if !ok {
            let _ = run_within(Command::new("umount").arg("-l").arg(&self.0), LIMIT);
        }
    }
}

/// The first few of `files` whose (uid, mode & 07777) `bad` picks, as `name uid:gid mode`,
/// then how many more.
fn setuid_files_where(files: &[PathBuf], bad: impl Fn(u32, u32) -> bool) -> Vec<String> {
    let all: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(p).unwrap();
            bad(m.uid(), m.mode() & 0o7777).then(|| {
                format!(
                    "{} {}:{} {:o}",
                    p.file_name().unwrap().to_string_lossy(),
                    m.uid(),
                    m.gid(),
                    m.mode() & 0o7777
                )
            })
        })
        .collect();
    let n = all.len();
    let mut shown: Vec<String> = all.into_iter().take(5).collect();
    if n > 5 {
        shown.push(format!("… {} more", n - 5));
    }
    shown
}

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

/// Fills the filesystem at `mnt` to its last block (as root, so the reserved blocks too):
/// one big file written until ENOSPC, again after a sync (which hands back what delayed
/// allocation had reserved), then one-byte files until a new file cannot get a block.
/// Returns the files to delete to make room again.
fn fill(mnt: &Path) -> Vec<PathBuf> {
    let big = mnt.join("filler");
    let mut f = std::fs::File::create(&big).unwrap();
    for chunk in [65536usize, 1024, 1] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match f.write_all(&buf) {
                Ok(()) => continue,
                Err(e) if is_enospc(&e) => {
                    let _ = f.sync_all();
                    match f.write_all(&buf) {
                        Ok(()) => continue,
                        Err(e) if is_enospc(&e) => break,
                        Err(e) => panic!("filling {}: {e}", big.display()),
                    }
                }
                Err(e) => panic!("filling {}: {e}", big.display()),
            }
        }
    }
    let _ = f.sync_all();
    let mut made = vec![big];
    for i in 0..2000 {
        let p = mnt.join(format!("filler{i}"));
        let mut f = match std::fs::File::create(&p) {
            Ok(f) => f,
            Err(e) if is_enospc(&e) => return made, // out of inodes
            Err(e) => panic!("filling {}: {e}", p.display()),
        };
        made.push(p.clone());
        match f.write_all(b"x").and_then(|()| f.sync_all()) {
            Ok(()) => {}
            Err(e) if is_enospc(&e) => return made,
            Err(e) => panic!("filling {}: {e}", p.display()),
        }
    }
    panic!("{} does not fill up", mnt.display());
}

fn journal_write_failing_on_a_full_filesystem() {
    let Some(_) = require!(Root) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let mkfs = run_within(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024", "-I", "256"])
            .arg(&img),
        LIMIT,
    );
    if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
        skip(format!("mkfs.ext4 failed: {mkfs:?}"));
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mount = run_within(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt),
        LIMIT,
    );
    if !mount.as_ref().is_ok_and(|o| o.status.success()) {
        skip(format!("cannot mount a loop filesystem: {mount:?}"));
    }
    let _unmount = Unmount(mnt.clone());
    let root = mnt.join("rootfs");
    make_dir(&root, (0, 0), 0o755);
    make_dir(&root.join("bin"), (0, 0), 0o755);
    make_dir(&root.join("etc"), (0, 0), 0o755);
    let setuid: Vec<PathBuf> = (0..200).map(|i| root.join(format!("bin/s{i}"))).collect();
    for p in &setuid {
        make_file(p, (0, 0), 0o4755);
    }
    for i in 0..50 {
        make_file(&root.join(format!("etc/p{i}")), (i, i), 0o644);
    }
    let before = snapshot(&root);
    let fillers = fill(&mnt);
    let out = shift(&root, &[MAP]);
    let mut c = Checks::default();
    c.check(out.status.code().is_some_and(|c| c != 0), || {
        format!(
            "the shift must fail when its journal cannot be written: {}",
            describe(&out)
        )
    });
    let err = stderr(&out);
    c.check(
        err.contains("journal") && err.to_lowercase().contains("no space"),
        || format!("stderr should name the journal and 'No space': {err}"),
    );
    let lost = setuid_files_where(&setuid, |uid, mode| uid == 100000 && mode & 0o4000 == 0);
    c.check(lost.is_empty(), || {
        format!("setuid files lost their setuid bit without a journal record: {lost:?}")
    });
    if snapshot(&root) == before {
        let j = journal_of(&root);
        c.check(std::fs::symlink_metadata(&j).is_err(), || {
            format!("nothing changed, yet a journal is left: {}", j.display())
        });
        c.check(get_xattr(&root, c"user.idshift.pending").is_none(), || {
            "nothing changed, yet user.idshift.pending is left on DIR".into()
        });
        let st = run_ok(&mut status_cmd(&root, &[]));
        c.check(
            st.status.success() && stdout(&st).contains("unfinished shift: none"),
            || format!("nothing changed, yet status: {}", describe(&st)),
        );
    }
    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    let out = shift(&root, &[MAP]);
    c.code(&out, 0, "the shift once there is room");
    let wrong = setuid_files_where(&setuid, |uid, mode| (uid, mode) != (100000, 0o4755));
    c.check(wrong.is_empty(), || {
        format!("setuid files not 100000 04755 after the rerun: {wrong:?}")
    });
    c.holds("every file shifted", || {
        assert_shifted(&before, &snapshot(&root), &plus(100000))
    });
    c.done();
}

// ---------------------------------------------------------------------------------------------
// Findings of an adversarial review, each as a regression test.

/// Runs `shift DIR ARGS --threads 1` killed (by the fault hook) before its change `n`; a run
/// that gets that far without `n` changes completes.
fn killed_at(root: &Path, args: &[&str], n: impl ToString) -> Output {
    run_ok(
        shift_cmd(root, args)
            .args(["--threads", "1"])
            .env(CRASH, n.to_string()),
    )
}

/// Runs `args` on a fresh sample (after `prepare`) killed before change N, for N = 1, 2, …
/// until a run completes (exit 0); after each kill calls `after(root, n)`. Returns the tree the
/// complete run left, and its N.
fn each_kill_point(
    prepare: &dyn Fn(&Path),
    args: &[&str],
    after: &mut dyn FnMut(&Path, u32),
) -> (tempfile::TempDir, PathBuf, u32) {
    for n in 1..=500u32 {
        let (t, root) = sample();
        prepare(&root);
        let out = killed_at(&root, args, n.to_string());
        if out.status.signal() != Some(9) {
            assert_eq!(out.status.code(), Some(0), "N={n}: {}", describe(&out));
            return (t, root, n);
        }
        after(&root, n);
    }
    panic!("the shift never completed without being killed");
}

fn has_cap(p: &Path) -> bool {
    get_xattr(p, c"security.capability").is_some()
}

// A record never gives back a capability or setuid bit the inode lost after it was finished:
// killed after usr/bin/ping was shifted (capability rewritten), then ping is rewritten (the
// kernel drops the capability), then the resume.
fn a_finished_inode_never_gets_back_what_it_lost_later() {
    let Some(_) = require!(Root) else { return };
    let mut seen = 0;
    each_kill_point(&|_| {}, &[MAP], &mut |root, n| {
        let ping = root.join("usr/bin/ping");
        if !(owner(&ping).0 == 100000 && has_cap(&ping)) {
            return; // not finished at this point
        }
        seen += 1;
        std::fs::write(&ping, b"#!/bin/sh\nexec id\n").unwrap();
        assert!(
            !has_cap(&ping),
            "N={n}: the write did not drop the capability"
        );
        set_mode(&ping, 0o755);
        let out = shift(root, &[MAP]);
        // Killed between the capability's write and the note that follows it, the run left no
        // word that it wrote it: the resume cannot vouch that the write came after, and names
        // the loss instead of passing it off (exit 1, ping alone). Otherwise nothing is lost.
        let err = stderr(&out);
        if out.status.code() == Some(1) {
            assert!(
                err.contains("ping: lost: its file capability") && err.lines().count() == 1,
                "N={n}: {}",
                describe(&out)
            );
        } else {
            assert_code(&out, 0);
        }
        assert!(
            !has_cap(&ping),
            "N={n}: the capability came back: {}",
            describe(&out)
        );
        assert_eq!(
            std::fs::symlink_metadata(&ping).unwrap().mode() & 0o7777,
            0o755,
            "N={n}"
        );
    });
    assert!(seen > 0, "no kill point left ping finished");
}

// A completed shift killed before its journal was removed: the reverse shift afterwards is a
// new shift, not a rollback replaying records of inodes changed since.
fn the_reverse_of_a_completed_shift_is_not_a_rollback() {
    let Some(_) = require!(Root) else { return };
    let mut seen = 0;
    each_kill_point(&|_| {}, &[MAP], &mut |root, n| {
        let j = std::fs::read_to_string(journal_of(root)).unwrap_or_default();
        if !j.ends_with("done\n") {
            return;
        }
        seen += 1;
        set_mode(&root.join("bin/su"), 0o755); // hardening after the shift
        std::fs::write(root.join("usr/bin/ping"), b"new").unwrap(); // an upgrade
        let out = shift(root, &["-r", MAP, "--json"]);
        assert_code(&out, 0);
        let s = json(&out).unwrap();
        assert_eq!(s["rolled_back"], false, "N={n}");
        let su = std::fs::symlink_metadata(root.join("bin/su")).unwrap();
        assert_eq!((su.uid(), su.mode() & 0o7777), (0, 0o755), "N={n}");
        assert!(!has_cap(&root.join("usr/bin/ping")), "N={n}");
    });
    assert!(
        seen > 0,
        "no kill point between 'done' and the journal's removal"
    );
}

// A rollback returns what the shift changed, and leaves files created since it began, even
// when they hold TO ids (a setuid file of container root's must not become host root's).
fn a_rollback_leaves_files_created_since_the_shift_began() {
    let Some(_) = require!(Root) else { return };
    let (_t, root) = sample();
    let before = snapshot(&root);
    let out = killed_at(&root, &[MAP], "20");
    assert_eq!(out.status.signal(), Some(9), "{}", describe(&out));
    let evil = root.join("etc/evil");
    make_file(&evil, (100000, 100000), 0o4755);
    set_mode(&evil, 0o4755);
    let out = shift(&root, &["-r", MAP]);
    assert_code(&out, 0);
    let m = std::fs::symlink_metadata(&evil).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (100000, 0o4755));
    std::fs::remove_file(&evil).unwrap();
    assert_same_tree(
        &without_times_and_inodes(&snapshot(&root)),
        &without_times_and_inodes(&before),
        "rolled back",
    );
}

// Overlapping ranges: after a crash, another process changes one id of a shifted inode (or adds
// an ACL entry); the other ids are still judged one by one, never shifted twice.
fn overlapping_ranges_judge_each_id_on_its_own() {
    let Some(_) = require!(Root) else { return };
    let prepare = |root: &Path| assert_code(&shift(root, &[MAP]), 0);
    let args = ["--from", MAP, "--to", "b:0:100007:65536"];
    let mutate = |root: &Path| {
        // etc/notes and bin/su start at 100000:100000 (container root).
        lchown(root.join("etc/notes"), None, Some(100000)).unwrap();
        lchown(root.join("bin/su"), Some(100002), None).unwrap();
        set_mode(&root.join("bin/su"), 0o4755);
        let acl = root.join("etc/acl");
        let st = std::process::Command::new("setfacl")
            .args(["-m", "u:100001:r"])
            .arg(&acl)
            .status();
        assert!(st.is_ok_and(|s| s.success()), "setfacl");
    };
    let (_t, reference) = sample();
    prepare(&reference);
    mutate(&reference);
    assert_code(&shift(&reference, &args), 0);
    let want = without_times_and_inodes(&snapshot(&reference));
    each_kill_point(&prepare, &args, &mut |root, n| {
        mutate(root);
        let out = shift(root, &args);
        assert_code(&out, 0);
        assert_same_tree(
            &without_times_and_inodes(&snapshot(root)),
            &want,
            &format!("killed before change {n}, one id changed, resumed"),
        );
    });
}

// A rollback killed half-way, then the shift resumed forward: the rollback's records count.
// etc/zsuid (container root's setuid file, there before the shift: an id in TO) is mapped back
// by the rollback (see the README's one limit) and shifted again by the forward run, setuid
// bit included, wherever the rollback was killed.
fn a_forward_resume_after_a_killed_rollback_uses_its_records() {
    let Some(_) = require!(Root) else { return };
    for n in 1..=80u32 {
        let (_t, root) = sample();
        let z = root.join("etc/zsuid");
        make_file(&z, (100000, 100000), 0o4755);
        set_mode(&z, 0o4755);
        let out = killed_at(&root, &[MAP], "4");
        assert_eq!(out.status.signal(), Some(9), "{}", describe(&out));
        let out = killed_at(&root, &["-r", MAP], n.to_string());
        let complete = out.status.signal() != Some(9);
        let out = shift(&root, &[MAP]);
        assert_code(&out, 0);
        let m = std::fs::symlink_metadata(&z).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (100000, 0o4755), "N={n}");
        if complete {
            return;
        }
    }
    panic!("the rollback never completed");
}

// A rollback killed after it completed (its journal ends in `done`) and run again: nothing
// moves twice, with overlapping ranges too. And the rollback of a shift killed before it
// changed anything has nothing to roll back.
fn a_completed_rollback_run_again_and_an_untouched_tree_do_not_shift_back() {
    let Some(_) = require!(Root) else { return };
    // Shifted into MAP by some other tool: no record on the tree to fall back on.
    let prepare = |root: &Path| {
        assert_code(&shift(root, &[MAP]), 0);
        xattr::remove(root, "user.idshift.map").expect("remove user.idshift.map");
    };
    let fwd = ["--from", MAP, "--to", "b:0:100007:65536"];
    let back = ["--from", "b:0:100007:65536", "--to", MAP];
    let mut seen = 0;
    for n in 1..=200u32 {
        let (_t, root) = sample();
        prepare(&root);
        let original = without_times_and_inodes(&snapshot(&root));
        let out = killed_at(&root, &fwd, "12");
        assert_eq!(out.status.signal(), Some(9), "{}", describe(&out));
        let out = killed_at(&root, &back, n.to_string());
        if out.status.signal() != Some(9) {
            assert_code(&out, 0);
            break;
        }
        let j = std::fs::read_to_string(journal_of(&root)).unwrap_or_default();
        if !j.ends_with("done\n") {
            continue;
        }
        seen += 1;
        let again = shift(&root, &back);
        assert_code(&again, 0);
        assert_same_tree(
            &without_times_and_inodes(&snapshot(&root)),
            &original,
            &format!("rollback killed after done (N={n}), run again"),
        );
    }
    assert!(seen > 0, "no kill point after the rollback's done line");
    // Killed after its journal was written but before the tree was marked: nothing changed,
    // nothing to roll back. (Killed before even that, at N=1, a run leaves no trace at all: its
    // "rollback" is then a plain reverse shift, as asked.)
    {
        let n = 2u32;
        let (_t, root) = sample();
        prepare(&root);
        let original = without_times_and_inodes(&snapshot(&root));
        let out = killed_at(&root, &fwd, n.to_string());
        assert_eq!(out.status.signal(), Some(9), "{}", describe(&out));
        // Refused (nothing to roll back) or nothing to do (the record says MAP): never a
        // shift of the untouched tree the other way.
        let out = shift(&root, &back);
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "N={n}: {}",
            describe(&out)
        );
        assert_same_tree(
            &without_times_and_inodes(&snapshot(&root)),
            &original,
            &format!("rollback of a shift killed at N={n}"),
        );
    }
}

// Killed right after an inode's chown (its capability dropped, not yet written back), then the
// file is rewritten: the record does not put the capability onto the new content; the loss is
// reported (exit 1) instead of passed off as done.
fn a_capability_is_not_restored_onto_a_file_changed_after_the_chown() {
    let Some(_) = require!(Root) else { return };
    let mut seen = 0;
    each_kill_point(&|_| {}, &[MAP], &mut |root, n| {
        let ping = root.join("usr/bin/ping");
        if owner(&ping).0 != 100000 || has_cap(&ping) {
            return;
        }
        seen += 1;
        std::fs::write(&ping, b"#!/bin/sh\nexec id\n").unwrap();
        let out = shift(root, &[MAP]);
        assert_code(&out, 1);
        assert!(
            stderr(&out).contains("lost: its file capability"),
            "N={n}: {}",
            describe(&out)
        );
        assert!(!has_cap(&ping), "N={n}: the capability came back");
        // Never forgotten: the next run names it again, until it is accepted.
        let out = shift(root, &[MAP]);
        assert_code(&out, 1);
        assert!(
            stderr(&out).contains("ping: lost"),
            "N={n}: {}",
            describe(&out)
        );
        let out = shift(root, &[MAP, "--accept-loss", ping.to_str().unwrap()]);
        assert_code(&out, 0);
        assert_code(&shift(root, &[MAP]), 0);
        assert!(!has_cap(&ping), "N={n}");
    });
    assert!(
        seen > 0,
        "no kill point between ping's chown and its capability"
    );
}

// Killed before an inode's chown (its record synced), then its setuid bit is removed and its
// capability dropped by a write: the resume does not put them back.
fn what_was_removed_before_the_chown_stays_removed() {
    let Some(_) = require!(Root) else { return };
    each_kill_point(&|_| {}, &[MAP], &mut |root, n| {
        let (su, ping) = (root.join("bin/su"), root.join("usr/bin/ping"));
        let (su_before, ping_before) = (owner(&su).0 == 0, owner(&ping).0 == 0);
        if su_before {
            set_mode(&su, 0o755);
        }
        if ping_before {
            std::fs::write(&ping, b"new").unwrap();
        }
        let out = shift(root, &[MAP]);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "N={n}: {}",
            describe(&out)
        );
        if su_before {
            let m = std::fs::symlink_metadata(&su).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (100000, 0o755), "N={n}");
        }
        if ping_before {
            assert!(!has_cap(&ping), "N={n}: the capability came back");
        }
    });
}

// A rollback killed anywhere (after a forward run killed half-way), then run again: every
// inode as it was, setuid/setgid bits and capabilities included.
fn a_killed_rollback_run_again_restores_everything() {
    let Some(_) = require!(Root) else { return };
    for n in 1..=200u32 {
        let (_t, root) = sample();
        let original = without_times_and_inodes(&snapshot(&root));
        let out = killed_at(&root, &[MAP], "40");
        assert_eq!(out.status.signal(), Some(9), "{}", describe(&out));
        let out = killed_at(&root, &["-r", MAP], n.to_string());
        let complete = out.status.signal() != Some(9);
        if !complete {
            let out = shift(&root, &["-r", MAP]);
            assert_code(&out, 0);
        }
        assert_same_tree(
            &without_times_and_inodes(&snapshot(&root)),
            &original,
            &format!("rollback killed at N={n}, run again"),
        );
        if complete {
            return;
        }
    }
    panic!("the rollback never completed");
}
