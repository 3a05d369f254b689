//! The generated helpers: shell completions and man pages; --help and --version; what a caller
//! without root is told when root's files refuse it.

mod common;

use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(completions_for_every_shell),
        trial!(man_pages_render),
        trial!(help_and_version),
        trial!(
            the_binary_does_not_load_the_maths_library,
            Need::Tool("readelf")
        ),
        trial!(
            a_permission_refused_to_a_user_suggests_sudo,
            Need::Root,
            Need::TestUser
        ),
    ])
}

fn a_permission_refused_to_a_user_suggests_sudo() {
    let Some(env) = require!(Root, TestUser) else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = tmp.path().join("private");
    std::fs::create_dir_all(private.join("tree")).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let tree = private.join("tree");
    let out = run(&mut idshift_as(
        env.user(),
        &["status", tree.to_str().unwrap()],
    ));
    let err = assert_one_error_line(&out, 1, "Permission denied");
    assert!(
        err.contains("not root: if this is root's, run it with sudo"),
        "{err}"
    );
    // As root the same command works and says nothing of sudo.
    let out = run(&mut idshift(&["status", tree.to_str().unwrap()]));
    assert_code(&out, 0);
    assert!(!stderr(&out).contains("sudo"), "{}", stderr(&out));
}

fn completions_for_every_shell() {
    // How each shell's script names a subcommand: as its own word, so that `shift` is not
    // found inside `idshift` (or `mount` inside `umount`).
    let entry = |shell: &str, sub: &str| match shell {
        "bash" => format!("idshift,{sub})"),
        "zsh" => format!("'{sub}:"),
        _ => format!("-a \"{sub}\" -d "),
    };
    for (shell, marker) in [
        ("bash", "complete -F _idshift"),
        ("zsh", "#compdef idshift"),
        ("fish", "complete -c idshift"),
    ] {
        let out = run(&mut idshift(&["completions", shell]));
        assert_code(&out, 0);
        let text = stdout(&out);
        assert!(text.contains(marker), "{shell}: {marker} missing");
        for sub in [
            "exec", "shift", "status", "ranges", "migrate", "mount", "umount",
        ] {
            let want = entry(shell, sub);
            assert!(text.contains(&want), "{shell}: no {want:?} for {sub}");
        }
    }
    if on_path("bash") {
        let script = stdout(&run(&mut idshift(&["completions", "bash"])));
        let check = run(std::process::Command::new("bash").args(["-n", "-c", &script]));
        assert_code(&check, 0);
    }
    assert_code(&run(&mut idshift(&["completions", "nosh"])), 2);
}

fn man_pages_render() {
    let out = run(&mut idshift(&["man"]));
    assert_code(&out, 0);
    assert!(stdout(&out).starts_with(".ie"), "roff");
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut idshift(&[
        "man",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]));
    assert_code(&out, 0);
    for page in [
        "idshift.1",
        "idshift-exec.1",
        "idshift-shift.1",
        "idshift-status.1",
        "idshift-ranges.1",
        "idshift-migrate.1",
        "idshift-mount.1",
        "idshift-umount.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".SH SYNOPSIS"), "{page}");
    }
    let shift = std::fs::read_to_string(dir.path().join("idshift-shift.1")).unwrap();
    assert!(shift.contains("cross\\-mounts"), "options documented");
    // What a man page is read for, on every page: examples, exit status, files, and the pages
    // of the tools idshift stands beside.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let page = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for section in [".SH EXAMPLES", ".SH \"EXIT STATUS\"", ".SH \"SEE ALSO\""] {
            assert!(text.contains(section), "{page}: no {section}");
        }
        for see in [
            "lxc\\-usernsexec(1)",
            "lxc.container.conf(5)",
            "subuid(5)",
            "newuidmap(1)",
        ] {
            assert!(text.contains(see), "{page}: SEE ALSO lacks {see}");
        }
    }
    for page in [
        "idshift.1",
        "idshift-exec.1",
        "idshift-shift.1",
        "idshift-migrate.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(
            text.contains(".SH FILES") && text.contains("/etc/subuid"),
            "{page}: FILES"
        );
    }
    let exec = std::fs::read_to_string(dir.path().join("idshift-exec.1")).unwrap();
    assert!(
        exec.contains("128+N") && exec.contains("127"),
        "exec's exit statuses"
    );
    if on_path("man") {
        // Every page, in a UTF-8 locale and in the C locale (where troff's ASCII device lacks
        // characters such as U+2026 and says so). C.UTF-8 only where the C library has it.
        let utf8 = std::process::Command::new("locale")
            .arg("-a")
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case("c.utf8") || l.eq_ignore_ascii_case("c.utf-8"))
            });
        let locales: &[&str] = if utf8 { &["C.UTF-8", "C"] } else { &["C"] };
        if !utf8 {
            eprintln!("man_pages_render: no C.UTF-8 locale here, pages rendered in C only");
        }
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let page = entry.unwrap().path();
            for &locale in locales {
                let out = run(std::process::Command::new("man")
                    .args(["--warnings", "-l"])
                    .arg(&page)
                    .env("MANWIDTH", "80")
                    .env("MANPAGER", "cat")
                    .env("LC_ALL", locale));
                assert_code(&out, 0);
                assert!(
                    stderr(&out).is_empty(),
                    "man warns on {} in {locale}: {}",
                    page.display(),
                    stderr(&out)
                );
                assert!(stdout(&out).contains("EXIT STATUS"));
            }
        }
    } else {
        eprintln!("man_pages_render: man(1) not installed, pages not rendered through it");
    }
}

/// `src/sys/pow.rs` resolves the one maths function idshift needs at link time, so the binary
/// does not load `libm.so.6` at each start (a measured ~3.5% of `exec`'s start-up), and
/// `build.rs` keeps that `pow` out of the dynamic symbol table.
fn the_binary_does_not_load_the_maths_library() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        skip("the shared libraries checked are glibc's");
    }
    let out = run(std::process::Command::new("readelf").arg("-d").arg(bin()));
    assert_code(&out, 0);
    let text = stdout(&out);
    let needed: Vec<&str> = text.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(
        needed.iter().any(|l| l.contains("libc.so")),
        "no libc among {needed:?}"
    );
    assert!(
        !needed.iter().any(|l| l.contains("libm.so")),
        "libm is loaded: {needed:?}"
    );
    // And idshift's `pow` is its own: a library loaded later gets the C library's.
    let out = run(std::process::Command::new("readelf")
        .args(["--dyn-syms", "-W"])
        .arg(bin()));
    assert_code(&out, 0);
    let exported: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| !l.contains(" UND ") && l.split_whitespace().last() == Some("pow"))
        .map(str::to_string)
        .collect();
    assert!(exported.is_empty(), "pow is exported: {exported:?}");
}

fn help_and_version() {
    let out = run(&mut idshift(&["--version"]));
    assert_code(&out, 0);
    assert_eq!(
        stdout(&out),
        format!("idshift {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&mut idshift(&["exec", "--help"]));
    assert_code(&out, 0);
    for want in [
        "--map <SPEC>",
        "--container <NAME>",
        "--oci-config",
        "--rootfs [<DIR>]",
        "Exit status",
        "127",
    ] {
        assert!(stdout(&out).contains(want), "exec --help lacks {want}");
    }
    let out = run(&mut idshift(&["shift", "--help"]));
    assert!(stdout(&out).contains("--dry-run") && stdout(&out).contains("Exit status"));
}
