//! Privilege boundaries (issue 9): what a container's code under `exec --rootfs` cannot reach,
//! a setuid idshift, `mount`'s nosuid and `umount` of mounts idshift did not make.
//!
//! The hostile programs are tiny static C programs compiled by the test (`cc -static`); the
//! tests that need them are skipped, visibly, where no static C compiler is installed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(
            a_setuid_or_setgid_copy_refuses_to_run,
            Need::Root,
            Need::TestUser,
            Need::StaticCc
        ),
        trial!(
            a_rootfs_program_cannot_push_input_into_the_callers_terminal,
            Need::Root,
            Need::Tool("script"),
            Need::StaticCc
        ),
        trial!(
            a_double_chroot_does_not_leave_the_rootfs,
            Need::Root,
            Need::StaticCc
        ),
        trial!(the_rootfs_environment_is_clean, Need::Root, Need::Rootfs),
        trial!(
            no_inherited_fd_device_node_or_remount_leads_out_of_the_rootfs,
            Need::Root,
            Need::StaticCc
        ),
    ])
}

/// A setuid (or setgid) copy of idshift refuses to run, whatever it was asked, before it parses
/// its arguments: the privilege boundary is newuidmap/newgidmap.
fn a_setuid_or_setgid_copy_refuses_to_run() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    // /var/tmp is on the root filesystem, not mounted nosuid.
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let marker = tmp.path().join("ran");
    let touch = format!("touch {}", marker.display());
    for mode in [0o4755, 0o2755] {
        let copy = tmp.path().join(format!("idshift-{mode:o}"));
        std::fs::copy(bin(), &copy).unwrap();
        std::os::unix::fs::chown(&copy, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = run(std::process::Command::new("runuser")
            .args(["-u", &env.user().name, "--"])
            .arg(&copy)
            .args(["exec", "-m", "b:0:0:65536", "--", "sh", "-c", &touch])
            .current_dir("/"));
        let err = assert_one_error_line(&out, 2, "refusing to run setuid/setgid");
        assert!(
            err.contains("the privilege boundary is newuidmap/newgidmap"),
            "{err}"
        );
        assert!(!marker.exists(), "mode {mode:o}: the command ran");
        // Even --help is refused: nothing is parsed.
        let out = run(std::process::Command::new("runuser")
            .args(["-u", &env.user().name, "--"])
            .arg(&copy)
            .arg("--help"));
        assert_code(&out, 2);
    }
}

/// Compiles a C program statically (it runs in a rootfs without a libc), or says why not.
fn static_program(dir: &Path, name: &str, source: &str) -> Option<PathBuf> {
    if let Some(why) = common::harness::missing(Need::StaticCc) {
        skip(why);
    }
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    std::fs::write(&src, source).unwrap();
    let result = run(Command::new("cc")
        .args(["-static", "-O", "-o"])
        .arg(&out)
        .arg(&src));
    assert!(result.status.success(), "cc -static: {}", stderr(&result));
    Some(out)
}

/// A rootfs with nothing but `/dev`, `/proc` and the static program at `/prog`, owned by
/// `base` (container root's host id): what a container's own root could have put there.
fn tiny_rootfs(dir: &Path, program: &Path, base: u32) -> PathBuf {
    let root = dir.join("rootfs");
    for sub in ["dev", "proc", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(program, root.join("prog")).unwrap();
    for entry in ["", "dev", "proc", "tmp", "prog"] {
        std::os::unix::fs::chown(root.join(entry), Some(base), Some(base)).unwrap();
    }
    root
}

/// Pushes `echo pwned > FILE` into every terminal it can reach, as input (`TIOCSTI`): the
/// controlling terminal through /dev/tty, and stdin, stdout, stderr.
const TIOCSTI_PROGRAM: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static int push(int fd, const char *line) {
    for (const char *p = line; *p; p++)
        if (ioctl(fd, TIOCSTI, p) < 0)
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    char line[4096];
    snprintf(line, sizeof line, "echo pwned > %s\n", argv[1]);
    int tty = open("/dev/tty", O_RDWR);
    int fds[] = {tty, 0, 1, 2};
    const char *names[] = {"/dev/tty", "stdin", "stdout", "stderr"};
    for (int i = 0; i < 4; i++) {
        if (fds[i] >= 0 && push(fds[i], line)) {
            printf("hostile: pushed into %s\n", names[i]);
            return 0;
        }
    }
    printf("hostile: could push nothing\n");
    return 0;
}
"#;

/// Turns `dev.tty.legacy_tiocsti` on while a test runs (kernels before 6.2, such as Debian
/// 12's, always allow TIOCSTI), and back as it was afterwards.
struct LegacyTiocsti(Option<String>);

impl LegacyTiocsti {
    const PATH: &'static str = "/proc/sys/dev/tty/legacy_tiocsti";

    fn on() -> LegacyTiocsti {
        let was = std::fs::read_to_string(Self::PATH).ok();
        if was.as_deref().map(str::trim) == Some("0") {
            std::fs::write(Self::PATH, "1").unwrap();
            return LegacyTiocsti(was);
        }
        LegacyTiocsti(None)
    }
}

impl Drop for LegacyTiocsti {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            let _ = std::fs::write(Self::PATH, was);
        }
    }
}

/// A program in the rootfs pushes a command into the terminal it runs on. Under
/// `exec --rootfs` from an interactive shell on a real terminal, that terminal is a new one of
/// the container's, so the shell never reads the line and the file is never made.
fn a_rootfs_program_cannot_push_input_into_the_callers_terminal() {
    let Some(_) = require!(Root) else { return };
    // The tree is container root's: root's own delegated range.
    let base = root_base();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let Some(prog) = static_program(tmp.path(), "tiocsti", TIOCSTI_PROGRAM) else {
        return;
    };
    let root = tiny_rootfs(tmp.path(), &prog, base);
    let _legacy = LegacyTiocsti::on();
    let pwned = tmp.path().join("pwned");
    let cmd = format!(
        "{} exec -m b:0:{base}:65536 --rootfs {} -- /prog {}\n",
        bin().display(),
        root.display(),
        pwned.display()
    );
    let steps: &[(&str, &str)] = &[
        (&cmd, "hostile: "),
        ("echo done-$((0+0))-$?\n", "done-0-"),
        ("exit\n", ""),
    ];
    let Some((text, _)) = interactive_bash(steps, 60) else {
        return;
    };
    assert!(
        text.contains("hostile: "),
        "the program did not run:\n{text}"
    );
    assert!(text.contains("done-0-0"), "{text}");
    assert!(
        !pwned.exists(),
        "the caller's shell ran the line the container pushed:\n{text}"
    );
}

/// Leaves a chroot the classic way: chroot into a subdirectory, `..` up from outside it, and
/// chroot to where that leads; then looks for a file of the host.
const ESCAPE_PROGRAM: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    mkdir("/x", 0755);
    if (chroot("/x") != 0) { perror("chroot /x"); return 2; }
    for (int i = 0; i < 64; i++)
        if (chdir("..") != 0) { perror("chdir .."); return 2; }
    if (chroot(".") != 0) { perror("chroot ."); return 2; }
    if (chdir("/") != 0) { perror("chdir /"); return 2; }
    int fd = open(argv[1], O_RDONLY);
    if (fd >= 0) { printf("escaped: the host's %s is readable\n", argv[1]); return 0; }
    if (access("/etc/debian_version", F_OK) == 0 || access("/usr/bin", F_OK) == 0) {
        printf("escaped: the host's / is reachable\n");
        return 0;
    }
    printf("contained\n");
    return 1;
}
"#;

/// Container root has CAP_SYS_CHROOT in its namespace: under a plain chroot, the double-chroot
/// escape reaches the host's `/`. Under `exec --rootfs` the host's tree is detached after
/// `pivot_root`: there is nothing above the rootfs to reach.
fn a_double_chroot_does_not_leave_the_rootfs() {
    let Some(_) = require!(Root) else { return };
    // The tree is container root's: root's own delegated range.
    let base = root_base();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(prog) = static_program(tmp.path(), "escape", ESCAPE_PROGRAM) else {
        return;
    };
    let root = tiny_rootfs(tmp.path(), &prog, base);
    let marker = tmp.path().join("host-marker");
    std::fs::write(&marker, "host\n").unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = idshift(&[
        "exec",
        "-m",
        &format!("b:0:{base}:65536"),
        "--rootfs",
        root.to_str().unwrap(),
        "--",
        "/prog",
        marker.to_str().unwrap(),
    ]);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _watchdog = Watchdog::new(child.id(), 30);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(1), "contained\n"),
        "stderr: {}",
        stderr(&out)
    );
}

/// Only PATH, HOME, TERM, LANG and LC_* reach a command under `--rootfs`, and what `--env`
/// adds: never the caller's agent sockets, session bus or runtime directory.
fn the_rootfs_environment_is_clean() {
    let Some(_) = require!(Root) else { return };
    let Some(rootfs) = test_rootfs() else { return };
    let env_inside = |extra: &[&str]| -> Vec<String> {
        // --force: other tests enter the same shared rootfs at the same time (in use).
        let mut args = vec!["exec", "-m", "b:0:0:65536", "--force", "--rootfs"];
        args.push(rootfs.to_str().unwrap());
        args.extend_from_slice(extra);
        args.extend(["--", "env"]);
        let mut cmd = idshift(&args);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("SSH_AUTH_SOCK", "/tmp/ssh-agent.sock")
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/0/bus")
            .env("XDG_RUNTIME_DIR", "/run/user/0")
            .env("FOO", "bar")
            .env("TERM", "xterm-256color")
            .env("LANG", "C.UTF-8")
            .env("LC_TIME", "C");
        let out = run(&mut cmd);
        assert_code(&out, 0);
        let mut lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        env_inside(&[]),
        [
            "HOME=/root",
            "LANG=C.UTF-8",
            "LC_TIME=C",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm-256color",
        ]
    );
    let with = env_inside(&["--env", "FOO", "-e", "NEW=1", "--env", "NOT_SET_ANYWHERE"]);
    assert!(with.contains(&"FOO=bar".to_string()), "{with:?}");
    assert!(with.contains(&"NEW=1".to_string()), "{with:?}");
    assert!(
        !with.iter().any(|l| l.starts_with("NOT_SET_ANYWHERE")),
        "{with:?}"
    );
    assert!(
        !with.iter().any(|l| l.starts_with("SSH_AUTH_SOCK")),
        "{with:?}"
    );
}

/// Tries the ways out that do not go through `..`: an inherited fd (argv[1]) to the host's
/// `/`, a device node in the rootfs (`/nulldev`, char 1:3), unmounting the minimal `/dev`, and
/// remounting the rootfs with devices allowed.
const FD_DEV_PROGRAM: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int bad = 0;
    int fd = atoi(argv[1]);
    if (fcntl(fd, F_GETFD) != -1) {
        printf("inherited fd %d is open\n", fd);
        bad = 1;
    }
    for (int i = 3; i < 256; i++)
        if (fcntl(i, F_GETFD) != -1) { printf("fd %d is open\n", i); bad = 1; }
    int dev = open("/nulldev", O_RDWR);
    if (dev >= 0) { printf("device node opened\n"); bad = 1; }
    else printf("device node: %s\n", strerror(errno));
    if (umount2("/dev", MNT_DETACH) == 0) { printf("unmounted /dev\n"); bad = 1; }
    else printf("umount /dev: %s\n", strerror(errno));
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL) == 0) {
        printf("remounted / with devices\n");
        bad = 1;
    } else printf("remount /: %s\n", strerror(errno));
    return bad;
}
"#;

/// Under `exec --rootfs` only fds 0-2 reach the command (an fd the caller had open to a host
/// directory would be a way out), device nodes in the rootfs open nothing (the bind is nodev),
/// and the command cannot mount, remount or unmount (no CAP_SYS_ADMIN) to lift that.
fn no_inherited_fd_device_node_or_remount_leads_out_of_the_rootfs() {
    let Some(_) = require!(Root) else { return };
    // The tree is container root's: root's own delegated range.
    let base = root_base();
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(prog) = static_program(tmp.path(), "fddev", FD_DEV_PROGRAM) else {
        return;
    };
    let root = tiny_rootfs(tmp.path(), &prog, base);
    nix::sys::stat::mknod(
        &root.join("nulldev"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    std::os::unix::fs::lchown(root.join("nulldev"), Some(base), Some(base)).unwrap();
    // An fd to the host's / that the caller leaves open across exec.
    let host = std::fs::File::open("/").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&host);
    nix::fcntl::fcntl(
        &host,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let mut cmd = idshift(&[
        "exec",
        "-m",
        &format!("b:0:{base}:65536"),
        "--rootfs",
        root.to_str().unwrap(),
        "--",
        "/prog",
        &fd.to_string(),
    ]);
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _watchdog = Watchdog::new(child.id(), 30);
    let out = child.wait_with_output().unwrap();
    drop(host);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\nstderr: {}",
        stderr(&out)
    );
    assert!(text.contains("device node: Permission denied"), "{text}");
    assert!(
        text.contains("umount /dev: Operation not permitted"),
        "{text}"
    );
}
