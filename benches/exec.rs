//! Start-up cost of `idshift exec -- true`, against the tools it replaces, measured in one run.
//!
//! `cargo bench --bench exec` (as root; set IDSHIFT_TEST_USER for the unprivileged user, default
//! `idshift-test`, as `.ci/setup-test-env` creates it). Each case runs `IDSHIFT_BENCH_RUNS` times
//! (default 300), the cases interleaved round-robin so that drift hits all alike; the table gives
//! the median and mean wall time per run and the ratios the targets are about:
//! - maps written directly: `idshift exec` vs `unshare --map-root-user` (target ≤ 1.15: no supervisor, as unshare);
//! - through newuidmap/newgidmap: `idshift exec` vs `lxc-usernsexec` (target: ≤ 1).
//!
//! Cases whose tool is missing, or that need root or the test user, are skipped with a reason.
//! `IDSHIFT_BENCH_BIN=/path/to/idshift` measures another build instead;
//! `IDSHIFT_BENCH_BEFORE=/path/to/idshift` adds an earlier build's root case to the same run.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Case {
    name: String,
    argv: Vec<String>,
    as_user: Option<(u32, u32)>,
    times: Vec<Duration>,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn run_once(case: &Case) -> Duration {
    let mut cmd = Command::new(&case.argv[0]);
    cmd.args(&case.argv[1..])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = case.as_user {
        cmd.uid(uid).gid(gid);
    }
    let start = Instant::now();
    let out = cmd.output().expect("spawn");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{}: {:?}: {}",
        case.name,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn median(times: &[Duration]) -> Duration {
    let mut v = times.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / times.len() as u32
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // IDSHIFT_BENCH_BIN: another idshift to measure (e.g. the build before a change).
    let idshift = std::env::var("IDSHIFT_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_idshift").to_string());
    let runs: usize = std::env::var("IDSHIFT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let root = nix::unistd::geteuid().is_root();
    let user_name = std::env::var("IDSHIFT_TEST_USER").unwrap_or_else(|_| "idshift-test".into());
    let user = nix::unistd::User::from_name(&user_name).ok().flatten();
    // A copy any user can execute (the build tree may be unreachable for the test user).
    let public = std::env::temp_dir().join("idshift-bench-bin");
    std::fs::create_dir_all(&public).unwrap();
    let public_bin = public.join("idshift");
    std::fs::copy(&idshift, &public_bin).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for p in [&public, &public_bin] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let public_bin = public_bin.to_string_lossy().into_owned();

    let mut cases: Vec<Case> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut add =
        |name: &str, argv: &[&str], as_user: Option<(u32, u32)>, ok: Result<(), String>| match ok {
            Ok(()) => cases.push(Case {
                name: name.into(),
                argv: argv.iter().map(|s| s.to_string()).collect(),
                as_user,
                times: Vec::with_capacity(runs),
            }),
            Err(why) => skipped.push(format!("{name}: {why}")),
        };
    let need_root = || {
        if root {
            Ok(())
        } else {
            Err("needs root".to_string())
        }
    };
    let need = |tool: &str| {
        if on_path(tool) {
            Ok(())
        } else {
            Err(format!("{tool} is not installed"))
        }
    };
    add("spawn `true` (floor)", &["true"], None, Ok(()));
    add(
        "root: idshift exec -m b:0:100000:65536 -- true",
        &[&idshift, "exec", "-m", "b:0:100000:65536", "--", "true"],
        None,
        need_root(),
    );
    add(
        "root: idshift exec -m b:0:0:1 -- true",
        &[&idshift, "exec", "-m", "b:0:0:1", "--", "true"],
        None,
        need_root(),
    );
    let before = std::env::var("IDSHIFT_BENCH_BEFORE").ok();
    if let Some(before) = &before {
        add(
            "root: before: idshift exec -m b:0:100000:65536 -- true",
            &[before, "exec", "-m", "b:0:100000:65536", "--", "true"],
            None,
            need_root(),
        );
    }
    add(
        "root: unshare --map-root-user true",
        &["unshare", "--map-root-user", "true"],
        None,
        need_root().and(need("unshare")),
    );
    let user_ok = match (&user, root) {
        (Some(_), true) => Ok(()),
        (None, _) => Err(format!("no user '{user_name}' (run .ci/setup-test-env)")),
        (_, false) => Err("needs root to switch to the test user".into()),
    };
    let ids = user.as_ref().map(|u| (u.uid.as_raw(), u.gid.as_raw()));
    let own = ids.map(|(u, _)| format!("b:0:{u}:1")).unwrap_or_default();
    add(
        "user: idshift exec -- true (newuidmap)",
        &[&public_bin, "exec", "--", "true"],
        ids,
        user_ok.clone().and(need("newuidmap")),
    );
    add(
        "user: lxc-usernsexec -- true (newuidmap)",
        &["lxc-usernsexec", "--", "true"],
        ids,
        user_ok.clone().and(need("lxc-usernsexec")),
    );
    add(
        "user: idshift exec -m b:0:UID:1 -- true (direct)",
        &[&public_bin, "exec", "-m", &own, "--", "true"],
        ids,
        user_ok.clone(),
    );
    add(
        "user: unshare --map-root-user true",
        &["unshare", "--map-root-user", "true"],
        ids,
        user_ok.and(need("unshare")),
    );

    // Warm up caches once, then interleave.
    for case in &cases {
        run_once(case);
    }
    for _ in 0..runs {
        for case in cases.iter_mut() {
            let t = run_once(case);
            case.times.push(t);
        }
    }

    println!("exec start-up, {runs} runs per case, interleaved (median / mean per run):");
    for case in &cases {
        println!(
            "  {:<52} {:>8.3} ms  {:>8.3} ms",
            case.name,
            median(&case.times).as_secs_f64() * 1e3,
            mean(&case.times).as_secs_f64() * 1e3
        );
    }
    let med = |prefix: &str| {
        cases
            .iter()
            .find(|c| c.name.starts_with(prefix))
            .map(|c| median(&c.times).as_secs_f64())
    };
    let ratio = |label: &str, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            println!("  ratio {label:<60} {:.2}x", a / b);
        }
    };
    ratio(
        "root idshift (65536 ids) / unshare --map-root-user",
        med("root: idshift exec -m b:0:100000"),
        med("root: unshare"),
    );
    ratio(
        "root before (65536 ids) / unshare --map-root-user",
        med("root: before:"),
        med("root: unshare"),
    );
    ratio(
        "root idshift (b:0:0:1) / unshare --map-root-user",
        med("root: idshift exec -m b:0:0:1"),
        med("root: unshare"),
    );
    ratio(
        "user idshift (newuidmap) / lxc-usernsexec (newuidmap)",
        med("user: idshift exec -- true"),
        med("user: lxc-usernsexec"),
    );
    ratio(
        "user idshift (direct) / unshare --map-root-user",
        med("user: idshift exec -m"),
        med("user: unshare"),
    );
    for s in skipped {
        println!("  skipped: {s}");
    }
    let _ = std::fs::remove_dir_all(Path::new(&public));
}
