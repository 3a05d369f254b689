//! The test harness of every integration test file (`harness = false`, libtest-mimic): each
//! file's `main` lists its tests with what they need; a need the machine lacks makes the test
//! *ignored* with the reason in its line (`test [skipped: needs root] name ... ignored`), so the
//! closing line counts what was skipped and says why without `--nocapture`.
//!
//! What a test can only find out while it runs (a tool that is missing, xattrs the scratch
//! filesystem refuses) ends it through [`skip`], which libtest-mimic also reports as ignored,
//! with the reason. A panic is a failure, with its message. Every test has a time limit (the
//! whole binary stops, failing, if one test runs longer), besides the per-command ones.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libtest_mimic::{Arguments, Completion, Trial};

/// What a test needs of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Need {
    /// Effective uid 0.
    Root,
    /// Unprivileged user namespaces can be created.
    Userns,
    /// The unprivileged test user with two delegated ranges, newuidmap, runuser (and root).
    TestUser,
    /// The real Debian rootfs (`IDSHIFT_TEST_ROOTFS`).
    Rootfs,
    /// A program on `PATH`.
    Tool(&'static str),
    /// The scratch filesystem (`$TMPDIR`) keeps user xattrs — and, as root, trusted ones,
    /// POSIX ACLs and file capabilities.
    ScratchXattrs,
    /// Programs can be run from the scratch filesystem (it is not `noexec`).
    ScratchExec,
    /// `chattr +i` works on the scratch filesystem.
    ScratchImmutable,
    /// A tmpfs can be mounted (root, and a mount namespace that allows it).
    Tmpfs,
    /// A small ext4 image can be made and loop-mounted.
    LoopExt4,
    /// Idmapped mounts of a tmpfs (Linux ≥ 6.3).
    IdmappedTmpfs,
    /// A static C program can be compiled (`cc -static`).
    StaticCc,
    /// LXC is installed and root has a delegated range of its own.
    Lxc,
}

/// The payload of a runtime skip (see [`skip`]).
pub struct Skip(pub String);

/// Ends the running test as skipped (reported `ignored`, with `why`). For what can only be
/// found out mid-test; declare a [`Need`] where it can be probed up front.
pub fn skip(why: impl Into<String>) -> ! {
    // resume_unwind: no panic hook, no "thread panicked" noise for a skip.
    std::panic::resume_unwind(Box::new(Skip(why.into())))
}

/// Why `need` is missing here, or `None` when it is met. Probed once per process.
pub fn missing(need: Need) -> Option<String> {
    static SEEN: OnceLock<Mutex<HashMap<Need, Option<String>>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    if let Some(known) = seen.lock().unwrap().get(&need) {
        return known.clone();
    }
    let why = probe(need);
    seen.lock().unwrap().insert(need, why.clone());
    why
}

/// The first missing need of `needs`, in order (so `Root` first spares the root-only probes).
pub fn first_missing(needs: &[Need]) -> Option<String> {
    needs.iter().find_map(|n| missing(*n))
}

fn probe(need: Need) -> Option<String> {
    use super::*;
    let root = || (!is_root()).then(|| "needs root".to_string());
    match need {
        Need::Root => root(),
        Need::Userns => userns_problem(),
        Need::TestUser => test_user().err(),
        Need::Rootfs => rootfs_problem(),
        Need::Tool(t) => (!on_path(t)).then(|| format!("needs {t} (not on PATH)")),
        Need::ScratchXattrs => scratch_xattrs_problem(),
        Need::ScratchExec => scratch_exec_problem(),
        Need::ScratchImmutable => root().or_else(|| {
            if !on_path("chattr") {
                return Some("needs chattr (not on PATH)".into());
            }
            let tmp = tempfile::tempdir().ok()?;
            let f = tmp.path().join("probe");
            std::fs::write(&f, "x").ok()?;
            let ok = quiet(Command::new("chattr").arg("+i").arg(&f));
            let _ = quiet(Command::new("chattr").arg("-i").arg(&f));
            (!ok).then(|| format!("chattr +i does not work on {}", scratch().display()))
        }),
        Need::Tmpfs => root().or_else(|| {
            let tmp = tempfile::tempdir().ok()?;
            let ok = quiet(
                Command::new("mount")
                    .args(["-t", "tmpfs", "tmpfs"])
                    .arg(tmp.path()),
            );
            let _ = quiet(Command::new("umount").arg(tmp.path()));
            (!ok).then(|| "cannot mount a tmpfs here".to_string())
        }),
        Need::LoopExt4 => root().or_else(loop_ext4_problem),
        Need::IdmappedTmpfs => {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut v = release
                .split(|c: char| !c.is_ascii_digit())
                .map(|n| n.parse::<u32>().unwrap_or(0));
            let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
            ((major, minor) < (6, 3))
                .then(|| format!("idmapped mounts on tmpfs need Linux 6.3 (this is {release})"))
        }
        Need::StaticCc => static_cc_problem(),
        Need::Lxc => root().or_else(|| {
            if !on_path("lxc-start") {
                return Some("LXC is not installed (run .ci/setup-test-env)".into());
            }
            let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
            (!subuid
                .lines()
                .any(|l| l.starts_with("root:") || l.starts_with("0:")))
            .then(|| "root has no range in /etc/subuid (run .ci/setup-test-env)".into())
        }),
    }
}

/// Runs `cmd` with no input or output, within 30 seconds; whether it succeeded (a program that
/// is not installed did not).
fn quiet(cmd: &mut Command) -> bool {
    if !super::on_path(&cmd.get_program().to_string_lossy()) {
        return false;
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    super::run_limited(cmd, Duration::from_secs(30)).is_ok_and(|o| o.status.success())
}

/// Where the tests make their scratch trees (tempfile's default: `$TMPDIR`, else /tmp).
pub fn scratch() -> std::path::PathBuf {
    std::env::temp_dir()
}

fn scratch_xattrs_problem() -> Option<String> {
    let tmp = match tempfile::tempdir() {
        Ok(t) => t,
        Err(e) => {
            return Some(format!(
                "cannot make a directory in {}: {e}",
                scratch().display()
            ))
        }
    };
    let f = tmp.path().join("probe");
    std::fs::write(&f, "x").ok()?;
    let mut tries: Vec<(&str, Vec<u8>)> = vec![("user.idshift-probe", b"x".to_vec())];
    if super::is_root() {
        tries.push(("trusted.idshift-probe", b"x".to_vec()));
        tries.push((
            super::tree::acl::ACCESS.to_str().unwrap(),
            super::tree::sample_acl(),
        ));
        tries.push((
            super::tree::caps::NAME.to_str().unwrap(),
            super::tree::CAP_NET_RAW_V2.to_vec(),
        ));
    }
    for (name, value) in tries {
        if let Err(e) = xattr::set(&f, name, &value) {
            return Some(format!(
                "{} keeps no {name} xattrs ({e}): set TMPDIR elsewhere",
                scratch().display()
            ));
        }
    }
    None
}

fn scratch_exec_problem() -> Option<String> {
    let dir = scratch();
    match nix::sys::statvfs::statvfs(&dir) {
        Ok(st) if st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC) => {
            Some(format!("{} is noexec: set TMPDIR elsewhere", dir.display()))
        }
        Ok(_) => None,
        Err(e) => Some(format!("cannot statvfs {}: {e}", dir.display())),
    }
}

fn rootfs_problem() -> Option<String> {
    let Some(dir) = std::env::var_os("IDSHIFT_TEST_ROOTFS") else {
        return Some(
            "needs IDSHIFT_TEST_ROOTFS (../shared/tools/make-rootfs.sh; .ci/run sets it)".into(),
        );
    };
    let dir = Path::new(&dir);
    (!dir.join("etc/debian_version").exists())
        .then(|| format!("{} is not a Debian rootfs", dir.display()))
}

fn loop_ext4_problem() -> Option<String> {
    for t in ["mkfs.ext4", "mount", "umount"] {
        if !super::on_path(t) {
            return Some(format!("needs {t} (not on PATH)"));
        }
    }
    let tmp = tempfile::tempdir_in("/var/tmp").ok()?;
    let img = tmp.path().join("fs.img");
    std::fs::File::create(&img).ok()?.set_len(4 << 20).ok()?;
    if !quiet(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "1024"])
            .arg(&img),
    ) {
        return Some("mkfs.ext4 fails here".into());
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).ok()?;
    if !quiet(
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt),
    ) {
        return Some("cannot mount a loop filesystem here".into());
    }
    let _ = quiet(Command::new("umount").arg(&mnt));
    None
}

fn static_cc_problem() -> Option<String> {
    if !super::on_path("cc") {
        return Some("needs a C compiler (cc) for a static helper".into());
    }
    let tmp = tempfile::tempdir().ok()?;
    let src = tmp.path().join("p.c");
    std::fs::write(&src, "int main(void) { return 0; }\n").ok()?;
    let ok = quiet(
        Command::new("cc")
            .args(["-static", "-o"])
            .arg(tmp.path().join("p"))
            .arg(&src),
    );
    (!ok).then(|| "cannot link a static program (install the libc's static library)".into())
}

/// One test: its name (the function's), what it needs, the function.
pub type Test = (&'static str, &'static [Need], fn());

/// `trial!(name, needs...)`: `("name", &[needs], name)` for a test function named `name`.
#[macro_export]
macro_rules! trial {
    ($f:ident) => {
        (stringify!($f), &[] as &'static [$crate::common::harness::Need], $f as fn())
    };
    ($f:ident, $($need:expr),+ $(,)?) => {
        (
            stringify!($f),
            &[$($need),+] as &'static [$crate::common::harness::Need],
            $f as fn(),
        )
    };
}

/// The longest one test may run (`IDSHIFT_TEST_TIMEOUT` seconds, default 300) before the whole
/// run stops as failed: nothing waits forever.
fn test_limit() -> Duration {
    let secs = std::env::var("IDSHIFT_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Runs `tests` as libtest does (same arguments: filters, `--list`, `--ignored`,
/// `--test-threads`...).
pub fn main(tests: Vec<Test>) -> ExitCode {
    let args = Arguments::from_args();
    let trials = tests
        .into_iter()
        .map(|(name, needs, f)| {
            let trial = Trial::ignorable_test(name, move || run_one(name, needs, f));
            if args.list || args.is_filtered_out(&trial) {
                return trial;
            }
            match first_missing(needs) {
                Some(why) => Trial::ignorable_test(name, move || run_one(name, needs, f))
                    .with_kind(format!("skipped: {why}"))
                    .with_ignored_flag(true),
                None => trial,
            }
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    super::remove_public_bin();
    conclusion.exit_code()
}

fn run_one(
    name: &'static str,
    needs: &'static [Need],
    f: fn(),
) -> Result<Completion, libtest_mimic::Failed> {
    // Run with --ignored, a test whose need is missing is still a skip, not a failure.
    if let Some(why) = first_missing(needs) {
        return Ok(Completion::Ignored {
            reason: Some(format!("skipped: {why}")),
        });
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let done = done.clone();
        let limit = test_limit();
        std::thread::spawn(move || {
            let end = std::time::Instant::now() + limit;
            while std::time::Instant::now() < end {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!("{name}: still running after {limit:?}: stopping the whole run (failed)");
            std::process::exit(101);
        });
    }
    let result = std::panic::catch_unwind(f);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    match result {
        Ok(()) => Ok(Completion::Completed),
        Err(payload) => match payload.downcast::<Skip>() {
            Ok(skip) => Ok(Completion::Ignored {
                reason: Some(format!("skipped: {}", skip.0)),
            }),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the test panicked".into());
                Err(format!("{name} failed: {msg}").into())
            }
        },
    }
}
