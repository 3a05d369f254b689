//! Shared helpers for the integration tests: run the binary, probe what the machine allows.
//!
//! Each test file's `main` lists its tests with their [`harness::Need`]s; a missing one makes the
//! test *ignored* with the reason. `require!` inside a test returns what the needs found (the
//! test user) and, should a need be missing after all, ends the test as skipped, never `ok`.
#![allow(dead_code)]

pub mod harness;
pub mod lxc;
pub mod tree;

pub use harness::{skip, Need};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What a test may need (the names `require!` takes).
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
    /// The starts of its two delegated 65536-id ranges, the same in /etc/subuid and
    /// /etc/subgid: the one on its user-name line, the one on its numeric-uid line.
    pub ranges: (u32, u32),
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
        $crate::common::require(&[$($crate::common::Cap::$cap),*])
    };
}

/// The environment for `caps`; a missing one ends the test as skipped (see [`skip`]). Always
/// `Some`: the `Option` keeps `let Some(env) = require!(..) else { return }` reading as before.
pub fn require(caps: &[Cap]) -> Option<Env> {
    let mut env = Env::default();
    for cap in caps {
        let need = match cap {
            Cap::Root => Need::Root,
            Cap::Userns => Need::Userns,
            Cap::TestUser => Need::TestUser,
        };
        if let Some(why) = harness::missing(need) {
            skip(why);
        }
        if *cap == Cap::TestUser {
            env.user = Some(test_user().unwrap_or_else(|why| skip(why)));
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
    // The two ranges .ci/setup-test-env delegates: NAME:A:65536 and UID:B:65536, the same in
    // /etc/subuid and /etc/subgid (wherever the machine had room for them).
    let uid = user.uid.as_raw();
    let mut found = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let start = |key: &str| -> Result<u32, String> {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.split(':').next() == Some(key))
                .collect();
            match lines[..] {
                [line] => match line.split(':').collect::<Vec<_>>()[..] {
                    [_, start, "65536"] => start.parse().map_err(|e| format!("{line}: {e}")),
                    _ => Err(format!("'{line}' in {file} is not KEY:START:65536")),
                },
                _ => Err(format!(
                    "'{name}' needs one {key}:START:65536 line in {file}, has {lines:?} \
                     (run .ci/setup-test-env)"
                )),
            }
        };
        found.push((start(&name)?, start(&uid.to_string())?));
    }
    if found[0] != found[1] {
        return Err(format!(
            "'{name}' has other ranges in /etc/subuid ({:?}) than in /etc/subgid ({:?})",
            found[0], found[1]
        ));
    }
    let ranges = found[0];
    Ok(TestUser {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        ranges,
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

static PUBLIC_BIN: OnceLock<PathBuf> = OnceLock::new();

/// A copy of the binary that any user can run (the build tree may sit under a 0700 home);
/// removed when the run ends ([`remove_public_bin`]).
pub fn public_bin() -> &'static Path {
    PUBLIC_BIN.get_or_init(|| {
        // In /var/tmp (the root filesystem): $TMPDIR may be noexec.
        let dir = Path::new("/var/tmp").join(format!("idshift-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = dir.join("idshift");
        std::fs::copy(bin(), &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
        dst
    })
}

/// Removes the copy [`public_bin`] made, if it made one.
pub fn remove_public_bin() {
    if let Some(dir) = PUBLIC_BIN.get().and_then(|b| b.parent()) {
        let _ = std::fs::remove_dir_all(dir);
    }
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

/// How long one command of a test may run (`IDSHIFT_CMD_TIMEOUT` seconds, default 300).
pub fn cmd_limit() -> Duration {
    let secs = std::env::var("IDSHIFT_CMD_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// Runs and returns the output (stdin closed), failing the test when
/// the command runs longer than [`cmd_limit`] (its process group is killed) and skipping it
/// when the program is not installed.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    run_limited(cmd, cmd_limit()).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` in a process group of its own with both outputs captured; `Err` (with what it
/// printed) when it did not end within `limit` and was killed, with all its descendants. A
/// program that is not installed skips the test.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    use std::os::unix::process::CommandExt;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // Like Command::output: no input.
    cmd.stdin(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => skip(format!(
            "needs {} (not installed)",
            cmd.get_program().to_string_lossy()
        )),
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    };
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_within(&mut child, limit);
    let output = Output {
        status: status.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9)),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    match status {
        Some(_) => Ok(output),
        None => Err(format!(
            "{cmd:?} did not finish within {limit:?} (killed)\nstdout:\n{}\nstderr:\n{}",
            stdout(&output),
            stderr(&output)
        )),
    }
}

/// Waits for `child` until `limit` has passed; then kills it and all its descendants, reaps it
/// and returns `None`.
pub fn wait_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("waitpid") {
            return Some(st);
        }
        if Instant::now() >= end {
            kill_tree(child.id());
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads a pipe to its end on a thread of its own.
pub fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// The pids of `pid`'s descendants (children first found by scanning /proc).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // The parent is the second field after the command's closing parenthesis.
            if let Some(pp) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u32>().ok())
            {
                parent_of.push((p, pp));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// SIGKILLs `pid`, its process group and every descendant (stopped or in another session).
pub fn kill_tree(pid: u32) {
    use nix::sys::signal::{kill, killpg, SIGKILL};
    use nix::unistd::Pid;
    let kids = descendants(pid);
    let _ = kill(Pid::from_raw(pid as i32), SIGKILL);
    let _ = killpg(Pid::from_raw(pid as i32), SIGKILL);
    for k in kids {
        let _ = kill(Pid::from_raw(k as i32), SIGKILL);
    }
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

/// The start of root's delegated range in /etc/subuid (a `root:` or `0:` line of at least
/// 65536 ids; .ci/setup-test-env adds one where there is room), if any.
pub fn root_range() -> Option<u32> {
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    subuid
        .lines()
        .find_map(|l| match l.split(':').collect::<Vec<_>>()[..] {
            ["root" | "0", start, count] if count.parse::<u32>().is_ok_and(|n| n >= 65536) => {
                start.parse::<u32>().ok()
            }
            _ => None,
        })
}

/// Where root's containers live in the tests: root's own range, else 100000.
pub fn root_base() -> u32 {
    root_range().unwrap_or(100000)
}

/// The real Debian rootfs of the tests (`IDSHIFT_TEST_ROOTFS`, built by
/// `../shared/tools/make-rootfs.sh`; `.ci/run` sets it); skips the test without it (declare
/// [`Need::Rootfs`] so that it is skipped up front). Always `Some`.
pub fn test_rootfs() -> Option<PathBuf> {
    if let Some(why) = harness::missing(Need::Rootfs) {
        skip(why);
    }
    std::env::var_os("IDSHIFT_TEST_ROOTFS").map(PathBuf::from)
}

/// Kills process `pid` and all its descendants (with SIGKILL) if it still runs after `secs`
/// seconds, unless dropped first: every test with a child it spawns itself has a time limit.
/// `fired()` says whether it had to.
pub struct Watchdog(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
);

impl Watchdog {
    pub fn new(pid: u32, secs: u64) -> Watchdog {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let done = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let (seen, fire) = (done.clone(), fired.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < deadline {
                if seen.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !seen.load(Ordering::SeqCst) {
                eprintln!("watchdog: {pid} still runs after {secs}s, killing it and its children");
                fire.store(true, Ordering::SeqCst);
                kill_tree(pid);
            }
        });
        Watchdog(done, fired)
    }

    pub fn fired(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Types `steps` into an interactive `bash` on a new terminal (script(1)): each step's keys,
/// then a wait until its text appears in what the terminal shows after them ("" for none), and
/// a short pause to let the keys take effect. After the last step the input is closed and the
/// shell must end; if anything still runs after `secs` seconds in all, the shell and everything
/// under it is killed and the test fails with the transcript. Returns the transcript (without
/// carriage returns) and the exit code. Skips the test without script or bash (declare
/// `Need::Tool("script")`). Always `Some`.
///
/// Waiting for output rather than for fixed times keeps the test right on a loaded machine: a
/// Ctrl-Z typed before the job starts would reach the shell instead.
pub fn interactive_bash(steps: &[(&str, &str)], secs: u64) -> Option<(String, Option<i32>)> {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    for tool in ["script", "bash"] {
        if let Some(why) = harness::missing(Need::Tool(tool)) {
            skip(why);
        }
    }
    let mut child = Command::new("script")
        .args(["-qec", "bash --norc --noprofile -i", "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("PS1", "$ ")
        .env("HISTFILE", "/dev/null")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let watchdog = Watchdog::new(child.id(), secs);
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
    let transcript = || String::from_utf8_lossy(&seen.lock().unwrap()).replace('\r', "");
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
    // End of input: script passes it on as an end of file, so the shell ends even when a step
    // did not do what it should.
    drop(stdin);
    let status = child.wait().unwrap();
    if watchdog.fired() {
        panic!(
            "the terminal session did not end within {secs}s (killed):\n{}",
            transcript()
        );
    }
    drop(watchdog);
    // The pipe ends when the last process holding script's output is gone; not waited for
    // beyond a few seconds.
    let end = Instant::now() + Duration::from_secs(5);
    while !reader.is_finished() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((transcript(), status.code()))
}
