//! Shared helpers for the integration tests: run the binary, probe what the machine allows.
//!
//! Tests that need root, user namespaces or the unprivileged test user call `require!`, which
//! prints `skipped: <why>` and makes the test return when the capability is missing. CI runs as
//! root with the test user created by `.ci/setup-test-env`, so there they all run.
#![allow(dead_code)]

pub mod lxc;
pub mod tree;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What a test may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Effective uid 0.
    Root,
    /// Unprivileged user namespaces can be created.
    Userns,
    /// The unprivileged test user exists with two delegated ranges, and newuidmap is installed.
    TestUser,
}

/// The unprivileged user of the tests (`IDSHIFT_TEST_USER`, default `idshift-test`).
#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// What `require!` found.
#[derive(Debug, Default)]
pub struct Env {
    pub user: Option<TestUser>,
}

impl Env {
    pub fn user(&self) -> &TestUser {
        self.user.as_ref().expect("require!(TestUser)")
    }
}

#[macro_export]
macro_rules! require {
    ($($cap:ident),*) => {
        $crate::common::require(&[$($crate::common::Cap::$cap),*], module_path!())
    };
}

pub fn require(caps: &[Cap], test: &str) -> Option<Env> {
    let mut env = Env::default();
    for cap in caps {
        let missing = match cap {
            Cap::Root => (!is_root()).then(|| "needs root".to_string()),
            Cap::Userns => userns_problem(),
            Cap::TestUser => match test_user() {
                Ok(u) => {
                    env.user = Some(u);
                    None
                }
                Err(why) => Some(why),
            },
        };
        if let Some(why) = missing {
            eprintln!("skipped: {test}: {why}");
            return None;
        }
    }
    Some(env)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn userns_problem() -> Option<String> {
    match std::fs::read_to_string("/proc/sys/user/max_user_namespaces") {
        Ok(n) if n.trim() == "0" => Some("user namespaces are disabled".into()),
        Ok(_) => None,
        Err(e) => Some(format!("no /proc/sys/user/max_user_namespaces: {e}")),
    }
}

fn test_user() -> Result<TestUser, String> {
    if !is_root() {
        return Err("needs root to run commands as the test user".into());
    }
    if let Some(why) = userns_problem() {
        return Err(why);
    }
    for helper in ["newuidmap", "newgidmap", "runuser"] {
        if !on_path(helper) {
            return Err(format!(
                "{helper} is not installed (run .ci/setup-test-env)"
            ));
        }
    }
    let name = std::env::var("IDSHIFT_TEST_USER").unwrap_or_else(|_| "idshift-test".into());
    let user = nix::unistd::User::from_name(&name)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no test user '{name}' (run .ci/setup-test-env)"))?;
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    if !subuid.lines().any(|l| l.starts_with(&format!("{name}:"))) {
        return Err(format!(
            "'{name}' has no /etc/subuid range (run .ci/setup-test-env)"
        ));
    }
    Ok(TestUser {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_idshift"))
}

/// A copy of the binary that any user can run (the build tree may sit under a 0700 home).
pub fn public_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("idshift-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("idshift");
        std::fs::copy(bin(), &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        dst
    })
}

/// `idshift ARGS` as the current user, from `/`.
pub fn idshift(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir("/");
    cmd
}

/// `idshift ARGS` as the test user, through `runuser`, from `/`.
pub fn idshift_as(user: &TestUser, args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", &user.name, "--"])
        .arg(public_bin())
        .args(args)
        .current_dir("/");
    cmd
}

/// Runs and returns the output, with a readable failure when it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code and prints both streams when it is wrong.
#[track_caller]
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Asserts the exit code and that stderr is one line containing `want`; returns that line.
#[track_caller]
pub fn assert_one_error_line(out: &Output, code: i32, want: &str) -> String {
    assert_code(out, code);
    let err = stderr(out);
    assert!(err.contains(want), "wanted '{want}' in: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

/// The owner and group of `path` itself (not following a symlink).
pub fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// `/proc/PID/{uid,gid}_map` lines as (ns, host, count).
pub type ProcMap = Vec<(u32, u32, u32)>;

/// `/proc/self/{uid,gid}_map` text as (ns, host, count) triples.
pub fn parse_proc_map(text: &str) -> ProcMap {
    text.lines()
        .map(|l| {
            let f: Vec<u32> = l.split_whitespace().map(|n| n.parse().unwrap()).collect();
            (f[0], f[1], f[2])
        })
        .collect()
}

/// The real Debian rootfs of the tests (`IDSHIFT_TEST_ROOTFS`, built by
/// `../shared/tools/make-rootfs.sh`; `.ci/run` sets it), or `None` with a printed reason.
pub fn test_rootfs() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("IDSHIFT_TEST_ROOTFS").map(PathBuf::from) else {
        eprintln!(
            "skipped: set IDSHIFT_TEST_ROOTFS to a tree built by ../shared/tools/make-rootfs.sh \
             (.ci/run does)"
        );
        return None;
    };
    if !dir.join("etc/debian_version").exists() {
        eprintln!("skipped: {} is not a Debian rootfs", dir.display());
        return None;
    }
    Some(dir)
}

/// Kills process `pid` (with SIGKILL) if it still runs after `secs` seconds, unless dropped
/// first: every test with a child on a terminal has a time limit.
pub struct Watchdog(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    pub fn new(pid: u32, secs: u64) -> Watchdog {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = done.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while std::time::Instant::now() < deadline {
                if seen.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if !seen.load(Ordering::SeqCst) {
                eprintln!("watchdog: {pid} still runs after {secs}s, killing it");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGKILL,
                );
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Types `steps` into an interactive `bash` on a new terminal (script(1)): each step's keys,
/// then a wait until its text appears in what the terminal shows after them ("" for none), and
/// a short pause to let the keys take effect. Gives up after `secs` seconds in all (the shell
/// is killed). Returns the transcript (without carriage returns) and the exit code. `None`
/// (with a printed reason) without script or bash.
///
/// Waiting for output rather than for fixed times keeps the test right on a loaded machine: a
/// Ctrl-Z typed before the job starts would reach the shell instead.
pub fn interactive_bash(steps: &[(&str, &str)], secs: u64) -> Option<(String, Option<i32>)> {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    if !on_path("script") || !on_path("bash") {
        eprintln!("skipped: needs script(1) and bash");
        return None;
    }
    let mut child = Command::new("script")
        .args(["-qec", "bash --norc --noprofile -i", "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .env("PS1", "$ ")
        .env("HISTFILE", "/dev/null")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let _watchdog = Watchdog::new(child.id(), secs);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for (keys, wait_for) in steps {
        let mark = seen.lock().unwrap().len();
        // A failed write means the shell is gone already; the transcript tells why.
        let _ = stdin
            .write_all(keys.as_bytes())
            .and_then(|()| stdin.flush());
        while !wait_for.is_empty() && Instant::now() < deadline {
            let text = String::from_utf8_lossy(&seen.lock().unwrap()[mark..]).replace('\r', "");
            if text.contains(wait_for) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let _ = reader.join();
    let text = String::from_utf8_lossy(&seen.lock().unwrap()).replace('\r', "");
    Some((text, status.code()))
}
