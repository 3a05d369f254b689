//! `idshift exec`, driven as a binary: as root (maps written directly) and as the unprivileged
//! test user (maps written by newuidmap/newgidmap).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(root_map_inside_equals_the_requested_map, Need::Root),
        trial!(
            root_runs_as_uid_and_gid_0_without_supplementary_groups,
            Need::Root
        ),
        trial!(uid_and_gid_options_pick_other_ids, Need::Root),
        trial!(a_uid_only_or_gid_only_map_works, Need::Root),
        trial!(exit_status_is_the_commands_own, Need::Root),
        trial!(not_found_is_127_and_not_executable_is_126, Need::Root),
        trial!(
            a_private_directory_on_the_way_points_to_map_self,
            Need::Root,
            Need::ScratchExec
        ),
        trial!(bad_maps_fail_with_125_before_the_command_runs, Need::Root),
        trial!(
            a_map_past_the_kernels_limits_is_named_before_the_command_runs,
            Need::Root
        ),
        trial!(maps_from_lxc_and_oci_configs, Need::Root),
        trial!(default_command_is_shell, Need::Root),
        trial!(sigterm_and_sigusr1_are_forwarded_to_the_command, Need::Root),
        trial!(the_command_dies_when_idshift_dies, Need::Root),
        trial!(
            idshift_becomes_the_command_and_leaves_it_no_child,
            Need::Root
        ),
        trial!(
            through_the_helpers_idshift_still_becomes_the_command,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            interactive_shell_on_a_terminal_has_job_control,
            Need::Root,
            Need::Tool("script")
        ),
        trial!(
            interactive_shell_in_a_rootfs_has_job_control,
            Need::Root,
            Need::Rootfs,
            Need::Tool("script")
        ),
        trial!(
            dash_in_a_rootfs_exits_without_a_tty_process_group_complaint,
            Need::Root,
            Need::Rootfs
        ),
        trial!(
            unprivileged_default_map_spans_every_range_including_numeric_lines,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            unprivileged_explicit_map_through_the_helpers,
            Need::Root,
            Need::TestUser
        ),
        trial!(unprivileged_own_id_and_map_self, Need::Root, Need::TestUser),
        trial!(
            unprivileged_map_not_delegated_fails_with_125_and_the_helpers_message,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            a_stopped_rootfs_exec_gives_the_terminal_back_and_takes_it_again,
            Need::Root,
            Need::Rootfs,
            Need::Tool("script")
        ),
    ])
}

fn uid_map_inside(cmd: &mut Command) -> (ProcMap, ProcMap) {
    let out = run(cmd);
    assert_code(&out, 0);
    let text = stdout(&out);
    let (u, g) = text.split_once("--\n").expect("separator");
    (parse_proc_map(u), parse_proc_map(g))
}

const SHOW_MAPS: [&str; 4] = [
    "--",
    "sh",
    "-c",
    "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map",
];

fn with_maps<'a>(head: &[&'a str]) -> Vec<&'a str> {
    let mut args = head.to_vec();
    args.extend(SHOW_MAPS);
    args
}

fn root_map_inside_equals_the_requested_map() {
    let Some(_) = require!(Root) else { return };
    let (u, g) = uid_map_inside(&mut idshift(&with_maps(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "-m",
        "u:65536:300000:10",
    ])));
    assert_eq!(u, vec![(0, 100000, 65536), (65536, 300000, 10)]);
    assert_eq!(g, vec![(0, 100000, 65536)]);
}

/// Run by `exec`: says "leader" if it is the process that was started (the leader of the
/// process group `run` gives it), names its parent, then becomes `cat` of its own children,
/// which must be none.
const BECAME_THE_COMMAND: &str = "read -r _ _ _ _ pgrp _ < /proc/$$/stat; \
     [ \"$$\" = \"$pgrp\" ] && echo leader; read -r parent < /proc/$PPID/comm; \
     echo \"parent $parent\"; exec cat /proc/thread-self/children";

/// A plain `exec` has no supervisor: the command runs in the process that was started, and the
/// process that made the namespace is gone and reaped (a command that waits for any child must
/// not find one it did not start).
fn idshift_becomes_the_command_and_leaves_it_no_child() {
    let Some(_) = require!(Root) else { return };
    for map in ["b:0:100000:65536", "b:0:0:1"] {
        let out = run(&mut idshift(&[
            "exec",
            "-m",
            map,
            "--",
            "sh",
            "-c",
            BECAME_THE_COMMAND,
        ]));
        assert_code(&out, 0);
        let text = stdout(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "map {map}: a child left, or a supervisor: {text}"
        );
        assert_eq!(lines[0], "leader", "map {map}: {text}");
    }
}

/// The same through newuidmap/newgidmap (children of idshift's own, waited for): under
/// `runuser`, the command's parent is `runuser`, with no idshift in between.
fn through_the_helpers_idshift_still_becomes_the_command() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let out = run(&mut idshift_as(
        env.user(),
        &["exec", "--", "sh", "-c", BECAME_THE_COMMAND],
    ));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "parent runuser\n");
}

fn root_runs_as_uid_and_gid_0_without_supplementary_groups() {
    let Some(_) = require!(Root) else { return };
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "--",
        "sh",
        "-c",
        "id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups)' /proc/self/status",
    ]));
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..3], ["0", "0", "0"], "{text}");
    let groups = text.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(
        groups["Groups:".len()..].trim(),
        "",
        "supplementary groups left: {text}"
    );
}

fn uid_and_gid_options_pick_other_ids() {
    let Some(_) = require!(Root) else { return };
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "--uid",
        "1000",
        "--gid",
        "100",
        "--",
        "sh",
        "-c",
        "id -u; id -g",
    ]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "1000\n100\n");
}

fn a_uid_only_or_gid_only_map_works() {
    let Some(_) = require!(Root) else { return };
    let (u, g) = uid_map_inside(&mut idshift(&with_maps(&["exec", "-m", "u:0:100000:10"])));
    assert_eq!((u, g), (vec![(0, 100000, 10)], vec![]));
    let (u, g) = uid_map_inside(&mut idshift(&with_maps(&["exec", "-m", "g:0:100000:10"])));
    assert_eq!((u, g), (vec![], vec![(0, 100000, 10)]));
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "u:0:100000:10",
        "--",
        "id",
        "-u",
    ]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "0\n");
}

fn exit_status_is_the_commands_own() {
    let Some(_) = require!(Root) else { return };
    fn with<'a>(cmd: &[&'a str]) -> Vec<&'a str> {
        [&["exec", "-m", "b:0:100000:65536", "--"][..], cmd].concat()
    }
    assert_code(&run(&mut idshift(&with(&["true"]))), 0);
    assert_code(&run(&mut idshift(&with(&["sh", "-c", "exit 7"]))), 7);
    // Killed by a signal: the caller's shell says 128+N (lxc-usernsexec says 0). idshift has
    // become the command, so it is the death by that signal itself that the shell sees.
    for (signal, want) in [("TERM", "143"), ("KILL", "137")] {
        let script = format!(
            "{} exec -m b:0:100000:65536 -- sh -c 'kill -{signal} $$'; echo $?",
            bin().display()
        );
        let out = run(std::process::Command::new("sh").args(["-c", &script]));
        assert_eq!(stdout(&out).trim(), want, "{}", stderr(&out));
    }
}

fn not_found_is_127_and_not_executable_is_126() {
    let Some(_) = require!(Root) else { return };
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "--",
        "no-such-command-x",
    ]));
    assert_code(&out, 127);
    assert!(
        stderr(&out).contains("cannot run 'no-such-command-x'"),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "--",
        script.to_str().unwrap(),
    ]));
    assert_code(&out, 126);
    assert_eq!(stdout(&out), "");
}

/// Failures of idshift itself: one line on stderr, exit 125, and the command never ran.
fn bad_maps_fail_with_125_before_the_command_runs() {
    let Some(_) = require!(Root) else { return };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let cases: &[&[&str]] = &[
        &["-m", "b:0:100000:65536x"],
        &["-m", "b:0:100000:-1"],
        &["-m", "b:0:100000:65536", "-m", "u:10:200000:1"],
        &["-m", "b:1:100000:65536"],
        &["-m", "u:0:100000:10", "--gid", "0"],
        &["--container", "no-such-container", "-P", "/nonexistent"],
        &["--lxc-config", "/nonexistent/config"],
    ];
    for case in cases {
        let mut args = vec!["exec"];
        args.extend_from_slice(case);
        args.extend(["--", "sh", "-c", &touch]);
        let out = run(&mut idshift(&args));
        assert_code(&out, 125);
        let err = stderr(&out);
        assert!(!err.trim().is_empty(), "{case:?}: no message");
        assert!(err.lines().next().unwrap().len() > 10, "{case:?}: {err}");
        assert!(!marker.exists(), "{case:?}: the command ran");
    }
}

/// The kernel takes at most 340 lines, and less than one page, in one write to `uid_map`; a
/// longer map is named in one line (exit 125, the command never runs) instead of failing as a
/// bare `EINVAL` from the write.
fn a_map_past_the_kernels_limits_is_named_before_the_command_runs() {
    let Some(_) = require!(Root) else { return };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    for (lines, expected) in [(340, "less than one page"), (341, "at most 340")] {
        let config = dir.path().join(format!("config-{lines}"));
        let mut text = String::from("lxc.idmap = g 0 100000 65536\n");
        for i in 0..lines {
            text.push_str(&format!("lxc.idmap = u {i} {} 1\n", 100_000 + 2 * i));
        }
        std::fs::write(&config, text).unwrap();
        let config = config.to_str().unwrap();
        let out = run(&mut idshift(&[
            "exec",
            "--lxc-config",
            config,
            "--",
            "sh",
            "-c",
            &touch,
        ]));
        assert_code(&out, 125);
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{lines} lines: {err}");
        assert!(
            err.contains("uid map") && err.contains(expected),
            "{lines} lines: {err}"
        );
        assert!(!marker.exists(), "{lines} lines: the command ran");
    }
}

fn maps_from_lxc_and_oci_configs() {
    let Some(_) = require!(Root) else { return };
    let dir = tempfile::tempdir().unwrap();
    let c1 = dir.path().join("c1");
    std::fs::create_dir(&c1).unwrap();
    std::fs::write(
        c1.join("config"),
        "lxc.include = /usr/share/lxc/config/userns.conf\n\
         lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 200000 65536\n",
    )
    .unwrap();
    let lxcpath = dir.path().to_str().unwrap();
    let (u, g) = uid_map_inside(&mut idshift(&with_maps(&[
        "exec",
        "--container",
        "c1",
        "-P",
        lxcpath,
    ])));
    assert_eq!((u, g), (vec![(0, 100000, 65536)], vec![(0, 200000, 65536)]));
    let config = c1.join("config");
    let (u, _) = uid_map_inside(&mut idshift(&with_maps(&[
        "exec",
        "--lxc-config",
        config.to_str().unwrap(),
    ])));
    assert_eq!(u, vec![(0, 100000, 65536)]);
    let oci = dir.path().join("config.json");
    std::fs::write(
        &oci,
        r#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 400000, "size": 1000}],
                      "gidMappings": [{"containerID": 0, "hostID": 500000, "size": 1000}]}}"#,
    )
    .unwrap();
    let (u, g) = uid_map_inside(&mut idshift(&with_maps(&[
        "exec",
        "--oci-config",
        oci.to_str().unwrap(),
    ])));
    assert_eq!((u, g), (vec![(0, 400000, 1000)], vec![(0, 500000, 1000)]));
}

fn default_command_is_shell() {
    let Some(_) = require!(Root) else { return };
    let out = run(idshift(&["exec", "-m", "b:0:100000:65536"])
        .env("SHELL", "/usr/bin/id")
        .stdin(Stdio::null()));
    assert_code(&out, 0);
    assert!(
        stdout(&out).starts_with("uid=0(root) gid=0(root)"),
        "{}",
        stdout(&out)
    );
}

/// `idshift ARGS` with its first line read, and a watchdog that kills it (and all it started)
/// after 30 seconds: a command that never prints fails the test instead of hanging it.
fn spawn_with_ready_line(
    args: &[&str],
) -> (
    std::process::Child,
    BufReader<std::process::ChildStdout>,
    String,
    Watchdog,
) {
    let mut child = idshift(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let watchdog = Watchdog::new(child.id(), 30);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    (child, out, line, watchdog)
}

fn sigterm_and_sigusr1_are_forwarded_to_the_command() {
    let Some(_) = require!(Root) else { return };
    for (sig, name) in [
        (nix::sys::signal::SIGTERM, "TERM"),
        (nix::sys::signal::SIGUSR1, "USR1"),
    ] {
        let script = format!(
            "trap 'echo got {name}; exit 3' {name}; echo ready; while :; do sleep 0.05; done"
        );
        let (mut child, mut out, line, _watchdog) =
            spawn_with_ready_line(&["exec", "-m", "b:0:100000:65536", "--", "sh", "-c", &script]);
        assert_eq!(line, "ready\n");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(rest, format!("got {name}\n"));
        assert_eq!(status.code(), Some(3));
    }
}

fn the_command_dies_when_idshift_dies() {
    let Some(_) = require!(Root) else { return };
    let (mut child, _out, line, _watchdog) = spawn_with_ready_line(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "--",
        "sh",
        "-c",
        "echo $$; exec sleep 60",
    ]);
    let inner: i32 = line.trim().parse().unwrap();
    // The pid printed is the namespace's view; the host sees the same pid (no pid namespace).
    assert!(std::path::Path::new(&format!("/proc/{inner}")).exists());
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{inner}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init to reap it.
        if stat.is_empty() || stat.contains(") Z ") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the command {inner} outlived idshift");
}

/// An interactive shell on a terminal: Ctrl-C reaches the shell's job (not idshift), Ctrl-Z
/// stops a job and the shell keeps control, and the shell's exit status comes back.
fn interactive_shell_on_a_terminal_has_job_control() {
    let Some(_) = require!(Root) else { return };
    job_control_on_a_terminal("-m b:0:100000:65536");
}

/// The same under `--rootfs`, where the shell is PID 2 behind idshift's PID 1.
fn interactive_shell_in_a_rootfs_has_job_control() {
    let Some(_) = require!(Root) else { return };
    let Some(rootfs) = test_rootfs() else { return };
    // The host-view rootfs as it is (identity map); bash writes no history into it.
    // --force: other tests enter the same shared rootfs at the same time (in use).
    job_control_on_a_terminal(&format!(
        "-m b:0:0:65536 --force --rootfs {}",
        rootfs.display()
    ));
}

/// The rootfs's own `/bin/sh` (dash), interactive: on exit it gives the terminal back to the
/// process group it started in, and says "Cannot set tty process group" if that fails. Its
/// exit status comes back and nothing is said.
fn dash_in_a_rootfs_exits_without_a_tty_process_group_complaint() {
    let Some(_) = require!(Root) else { return };
    let Some(rootfs) = test_rootfs() else { return };
    // The last case runs the default command: the rootfs's shell, as a user typing
    // `idshift exec --rootfs DIR` gets it.
    for (map, command) in [
        ("b:0:0:65536", " -- /bin/sh -i"),
        ("b:0:100000:65536", " -- /bin/sh -i"),
        ("b:0:0:65536", ""),
    ] {
        let cmd = format!(
            "{} exec -m {map} --force --rootfs {}{command}\n",
            bin().display(),
            rootfs.display()
        );
        let steps: &[(&str, &str)] = &[
            (&cmd, ""),
            ("echo d-$((2+2))\n", "d-4"),
            ("exit 3\n", ""),
            ("echo outer-$?\n", "outer-"),
            ("exit\n", ""),
        ];
        let Some((text, _)) = interactive_bash(steps, 30) else {
            return;
        };
        assert!(text.contains("outer-3"), "{map}: the exit status: {text}");
        assert!(
            !text.contains("Cannot set tty process group"),
            "{map}: dash could not give the terminal back:\n{text}"
        );
    }
}

/// Ctrl-C, Ctrl-Z, `jobs`, a job started with `&` brought back with `fg` and stopped again,
/// and the exit status, all through idshift; at most 60 seconds.
fn job_control_on_a_terminal(exec_args: &str) {
    let cmd = format!(
        "{} exec {exec_args} -- bash --norc --noprofile -i\n",
        bin().display()
    );
    // `echo x-$((1+1))` shows `x-2` only when run, not when typed.
    let steps: &[(&str, &str)] = &[
        (&cmd, ""),
        ("echo in-$((2+3))\n", "in-5"),
        ("echo s-$((1+1)); sleep 30\n", "s-2"),
        ("\x03", ""),
        ("echo alive-$?\n", "alive-"),
        ("echo s-$((1+2)); sleep 31\n", "s-3"),
        ("\x1a", "Stopped"),
        ("jobs\n", "Stopped"),
        // Jobs named by their text: the killed one may not be reaped yet on a loaded machine.
        ("kill -9 %?31\n", ""),
        ("sleep 33 &\n", ""),
        ("fg %?33\n", "sleep 33"),
        ("\x1a", "Stopped"),
        ("jobs\n", "Stopped"),
        ("kill -9 %?33\n", ""),
        // No job may be left when `exit` comes, or bash answers "There are stopped jobs." and
        // swallows it (the shell then waited for input that never came). Whatever is left (a
        // Ctrl-Z that stopped something else on a loaded machine) is killed and reaped, and
        // `jobs` must print nothing before the `j-6` marker.
        (
            "kill -9 $(jobs -p) 2>/dev/null; wait 2>/dev/null; jobs; echo j-$((3+3))\n",
            "j-6",
        ),
        ("jobs; echo none-$((3+4))\n", "none-7"),
        ("exit 5\n", ""),
        ("echo outer-$?\n", "outer-"),
        ("exit\n", ""),
    ];
    let Some((text, _)) = interactive_bash(steps, 60) else {
        return;
    };
    assert!(
        text.contains("alive-130"),
        "Ctrl-C did not reach the job:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("Stopped") && l.contains("sleep 31")),
        "Ctrl-Z did not stop the job:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("Stopped") && l.contains("sleep 33")),
        "a job brought back with fg was not stopped by Ctrl-Z:\n{text}"
    );
    assert!(
        !text.contains("There are stopped jobs"),
        "a job was left for exit:\n{text}"
    );
    assert!(text.contains("outer-5"), "the exit status: {text}");
}

fn unprivileged_default_map_spans_every_range_including_numeric_lines() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    // .ci/setup-test-env delegates NAME:A:65536 and UID:B:65536 (A, B: 200000, 300000 if free).
    let (u, g) = uid_map_inside(&mut idshift_as(env.user(), &with_maps(&["exec"])));
    let want = vec![(0, a, 65536), (65536, b, 65536)];
    assert_eq!(u, want);
    assert_eq!(g, want);
    let out = run(&mut idshift_as(env.user(), &["exec", "--", "id", "-u"]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "0\n");
}

fn unprivileged_explicit_map_through_the_helpers() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, b) = env.user().ranges;
    let (u, g) = uid_map_inside(&mut idshift_as(
        env.user(),
        &with_maps(&[
            "exec",
            "-m",
            &format!("b:0:{b}:65536"),
            "-m",
            &format!("u:65536:{a}:1"),
        ]),
    ));
    assert_eq!(u, vec![(0, b, 65536), (65536, a, 1)]);
    assert_eq!(g, vec![(0, b, 65536)]);
}

fn unprivileged_own_id_and_map_self() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let (a, _) = env.user().ranges;
    let me = env.user();
    let own = format!("b:0:{}:1", me.uid);
    let out = run(&mut idshift_as(me, &["exec", "-m", &own, "--", "id", "-u"]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "0\n");
    let (u, _) = uid_map_inside(&mut idshift_as(
        me,
        &with_maps(&["exec", "-s", "-m", &format!("b:0:{a}:65536")]),
    ));
    assert_eq!(u, vec![(0, a, 65536), (65536, me.uid, 1)]);
}

fn unprivileged_map_not_delegated_fails_with_125_and_the_helpers_message() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let out = run(&mut idshift_as(
        env.user(),
        &["exec", "-m", "b:0:100000:65536", "--", "sh", "-c", &touch],
    ));
    assert_code(&out, 125);
    let err = stderr(&out);
    assert!(
        err.starts_with("idshift: newuidmap refused the map"),
        "{err}"
    );
    assert!(
        err.contains("not allowed"),
        "the helper's own message is passed on: {err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!marker.exists(), "the command ran");
}

// `kill -TSTP` sent to idshift itself (not the keys, which go to the command): the caller's
// terminal is given back in the state it had before idshift stops, and taken over again after
// `fg` (the command's shell answers again, in raw mode).
fn a_stopped_rootfs_exec_gives_the_terminal_back_and_takes_it_again() {
    let Some(_) = require!(Root) else { return };
    let Some(rootfs) = test_rootfs() else { return };
    // --force: other tests enter the same shared rootfs at the same time (in use).
    // The --env makes the command line this run's own, for pgrep (another run of this test
    // on the machine would otherwise receive the TSTP).
    let args = format!(
        "-m b:0:0:65536 --force --env IDSHIFT_TSTP_TEST={} --rootfs {}",
        std::process::id(),
        rootfs.display()
    );
    let stop = format!("(sleep 3; kill -TSTP $(pgrep -o -f 'exec {args}')) &\n",);
    let cmd = format!(
        "{} exec {args} -- bash --norc --noprofile -i\n",
        bin().display()
    );
    let steps: &[(&str, &str)] = &[
        (&stop, ""),
        (&cmd, ""),
        ("echo in-$((2+3))\n", "in-5"),
        ("", "Stopped"),
        (
            "stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; echo st-$((4+4))\n",
            "st-8",
        ),
        ("fg\n", ""),
        // Raw again: Ctrl-Z is a key for the command's shell, which stops its own job.
        ("echo back-$((5+5)); sleep 30\n", "back-10"),
        ("\x1a", "Stopped"),
        ("kill -9 %?30; sleep 1; echo k-$((6+6))\n", "k-12"),
        // As above: no job left for `exit` to refuse over.
        (
            "kill -9 $(jobs -p) 2>/dev/null; wait 2>/dev/null; echo w-$((7+7))\n",
            "w-14",
        ),
        ("exit 3\n", ""),
        ("echo outer-$?\n", "outer-"),
        ("exit\n", ""),
    ];
    let Some((text, _)) = interactive_bash(steps, 60) else {
        return;
    };
    assert!(
        text.lines()
            .any(|l| l.trim_end().ends_with("icanon") && !l.contains("-icanon")),
        "the terminal was left raw while idshift was stopped:\n{text}"
    );
    assert!(text.contains("back-10"), "no answer after fg:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("Stopped") && l.contains("sleep 30")),
        "after fg, Ctrl-Z did not reach the command's shell (terminal not raw again):\n{text}"
    );
    assert!(text.contains("outer-3"), "the exit status:\n{text}");
}

// A command under a directory only its owner may enter (a 0700 home): the namespace's root,
// another host uid, is refused, and the one error line says that -s maps the caller too.
fn a_private_directory_on_the_way_points_to_map_self() {
    let Some(_) = require!(Root) else { return };
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // Only HOME is private on the way (tempfile may make its directory 0700 too).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let script = home.join("hello");
    std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = script.to_str().unwrap();
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "--",
        path,
    ]));
    let err = assert_one_error_line(&out, 126, "-s (--map-self) maps it too");
    assert!(
        err.contains(&format!("{} is yours", home.display())),
        "{err}"
    );
    // Found along PATH, it is not even seen from the namespace: 127, with the same hint.
    let out = run(idshift(&["exec", "-m", "b:0:100000:65536", "--", "hello"])
        .env("PATH", format!("{}:/usr/bin:/bin", home.display())));
    assert_one_error_line(&out, 127, "-s (--map-self) maps it too");
    // With -s it runs.
    let out = run(&mut idshift(&[
        "exec",
        "-s",
        "-m",
        "b:0:100000:65536",
        "--",
        path,
    ]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "hello\n");
    // A command that does not exist anywhere gets no hint.
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "b:0:100000:65536",
        "--",
        "no-such-cmd-x",
    ]));
    let err = assert_one_error_line(&out, 127, "cannot run 'no-such-cmd-x'");
    assert!(!err.contains("map-self"), "{err}");
    // A map that maps the caller's uid: the directory is no obstacle, and a file there that
    // cannot be executed is refused for what it is, without the hint.
    let plain = home.join("plain");
    std::fs::write(&plain, "#!/bin/sh\necho plain\n").unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&mut idshift(&[
        "exec",
        "-m",
        "b:0:0:1",
        "--",
        plain.to_str().unwrap(),
    ]));
    let err = assert_one_error_line(&out, 126, "cannot run");
    assert!(!err.contains("map-self"), "{err}");
}
