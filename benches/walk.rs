//! Where users wait on the walk: a cold cache, one huge directory, and `status` against the
//! least a status must do. Ratios are measured in one run; no timed assertion anywhere.
//!
//! `cargo bench --bench walk` as root (it chowns trees and drops the page cache). Environment:
//! - `IDSHIFT_BENCH_BIN`: the idshift to measure [default: this build's];
//! - `IDSHIFT_BENCH_BEFORE`: another idshift (e.g. the build before a change), measured in the
//!   same run on the same trees for before/after figures;
//! - `IDSHIFT_BENCH_DIR` [default `/var/tmp/idshift-bench`]: the 200k-inode tree of
//!   `cargo bench --bench shift` (`tree-200000`, built by it) and the flat directory built here;
//! - `IDSHIFT_BENCH_FLAT` [default 300000]: entries of the flat directory;
//! - `IDSHIFT_BENCH_MIGRATE_INODES` [default 1000000]: the tree of `cargo bench --bench shift`
//!   the `migrate` cases copy (`tree-1000000`: ~950k inodes, as `IDSHIFT_BENCH_INODES=1000000
//!   cargo bench --bench shift` builds it); the 200k tree when that one is not built.
//!
//! Cases:
//! - cold cache (the page cache dropped before each run): `shift` forward with the default
//!   thread count and with `--threads 4/16/64`, and `fuidshift` (lxd-tools) when installed;
//!   `status` likewise; and a bare walk (below);
//! - one directory of `IDSHIFT_BENCH_FLAT` empty files: `shift` forward and back with 1 and 2
//!   threads, and the peak RSS of each;
//! - `status` against a bare walk on the same threads that does what a status reporting
//!   capabilities and ACLs must: openat + getdents64 per directory, fstatat + llistxattr per
//!   inode; warm and cold;
//! - `migrate` of a container whose rootfs is a copy of the 1M-name tree (else the 200k one):
//!   shifted (every inode) against `--idmapped` (after the first, the config only).

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").expect("drop caches (needs root)");
}

/// Runs `bin args` and returns its time.
fn timed(bin: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let status = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let elapsed = t.elapsed();
    assert!(
        status.success() || status.code() == Some(1),
        "{bin} {args:?}: {status}"
    );
    elapsed
}

/// Peak RSS of `bin args`, in KiB: a fresh python3 runs it and reads RUSAGE_CHILDREN, which
/// then holds that command alone. `None` without python3.
fn peak_rss_kib(bin: &str, args: &[&str]) -> Option<u64> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import resource, subprocess, sys\n\
             subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n\
             print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
        ])
        .arg(bin)
        .args(args)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A directory of `n` empty files (kept between runs).
fn flat(dir: &Path, n: u64) -> PathBuf {
    let root = dir.join(format!("flat-{n}"));
    let done = root.with_extension("complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        let inner = root.join("d");
        std::fs::create_dir_all(&inner).unwrap();
        eprintln!("building {} …", inner.display());
        for i in 0..n {
            std::fs::File::create(inner.join(format!("f{i:07}"))).unwrap();
        }
        std::fs::write(&done, "").unwrap();
    }
    root
}

/// The bare walk: openat + getdents64 per directory, fstatat + llistxattr per inode, on
/// `threads` threads (rayon), directories as tasks. Returns the names seen.
fn bare_walk(root: &Path, threads: usize) -> u64 {
    use std::sync::atomic::AtomicU64;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let count = AtomicU64::new(0);
    let fd: OwnedFd =
        nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    pool.scope(|s| walk_dir(s, fd, &count));
    count.into_inner()
}

fn walk_dir<'s>(s: &rayon::Scope<'s>, dir: OwnedFd, count: &'s std::sync::atomic::AtomicU64) {
    use std::sync::atomic::Ordering;
    // getdents64 through nix's Dir (readdir over a dup of the fd).
    let Ok(mut entries) = Dir::from_fd(dir.try_clone().unwrap()) else {
        return;
    };
    for entry in entries.iter().flatten() {
        let name: &CStr = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        count.fetch_add(1, Ordering::Relaxed);
        let _ = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW);
        if entry.file_type() == Some(Type::Directory) {
            if let Ok(sub) = nix::fcntl::openat(
                &dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                Mode::empty(),
            ) {
                s.spawn(move |s| walk_dir(s, sub, count));
            }
        } else {
            let _ = idshift::sys::xattr::list(dir.as_fd(), Some(name));
        }
    }
}

/// A container `mig` under `DIR/lxc-bench` with a copy of `tree` shifted into 100000, then:
/// `migrate --to 300000` and back (shifted), `--idmapped` once (to the host view), and
/// `migrate --to 300000` and back again (the config only). Needs no LXC: only its layout.
fn migrate_cases(dir: &Path, tree: &Path, bins: &[(&str, String)]) {
    let lxcpath = dir.join("lxc-bench");
    let c = lxcpath.join("mig");
    let _ = std::fs::remove_dir_all(&lxcpath);
    std::fs::create_dir_all(&c).unwrap();
    let rootfs = c.join("rootfs");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(tree)
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(ok.success());
    let r = rootfs.to_str().unwrap();
    let (bin_label, bin) = &bins[0];
    timed(
        bin,
        &["shift", r, "b:0:100000:65536", "--progress", "never"],
    );
    std::fs::write(
        c.join("config"),
        format!(
            "lxc.uts.name = mig\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n\
             lxc.rootfs.path = dir:{r}\n"
        ),
    )
    .unwrap();
    let p = lxcpath.to_str().unwrap();
    let migrate = |extra: &[&str]| {
        let mut args = vec!["migrate", "mig", "-P", p, "--progress", "never"];
        args.extend_from_slice(extra);
        timed(bin, &args)
    };
    println!(
        "migrate of a container with {} ({bin_label}):",
        tree.display()
    );
    let shifted = migrate(&["--to", "300000"]) + migrate(&["--to", "100000"]);
    let first = migrate(&["--to", "100000", "--idmapped"]);
    let idmapped = migrate(&["--to", "300000"]) + migrate(&["--to", "100000"]);
    println!(
        "  shifted, there and back:             {:.3} s",
        secs(shifted)
    );
    println!(
        "  --idmapped the first time (to host):  {:.3} s",
        secs(first)
    );
    println!(
        "  --idmapped after, there and back:     {:.4} s",
        secs(idmapped)
    );
    println!(
        "  ratio shifted / idmapped migrate (there and back)           {:.0}x",
        secs(shifted) / secs(idmapped)
    );
    let _ = std::fs::remove_dir_all(&lxcpath);
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("walk benchmark skipped: needs root (it chowns trees and drops the page cache)");
        return;
    }
    let dir = PathBuf::from(
        std::env::var("IDSHIFT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/idshift-bench".into()),
    );
    let bin = std::env::var("IDSHIFT_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_idshift").to_string());
    let mut bins = vec![("idshift", bin)];
    if let Ok(before) = std::env::var("IDSHIFT_BENCH_BEFORE") {
        bins.push(("before", before));
    }
    let map = "b:0:100000:65536";

    // Cold cache on the 200k tree.
    let tree = dir.join("tree-200000");
    if dir.join("tree-200000.complete").exists() {
        let t = tree.to_str().unwrap();
        println!("cold cache, {t} (page cache dropped before each run):");
        let mut cold_default = f64::NAN;
        let mut cold_status = Vec::new();
        for (label, bin) in &bins {
            let mut best = f64::MAX;
            let mut default = 0.0;
            for threads in ["default", "4", "16", "64"] {
                let mut args = vec!["shift", t, map, "--progress", "never"];
                if threads != "default" {
                    args.extend(["--threads", threads]);
                }
                drop_caches();
                let d = timed(bin, &args);
                let mut back = vec!["shift", "-r", t, map, "--progress", "never"];
                back.extend(&args[5..]);
                timed(bin, &back);
                println!(
                    "  {label} shift forward, threads {threads:>7}: {:.3} s",
                    secs(d)
                );
                if threads == "default" {
                    default = secs(d);
                    if *label == bins[0].0 {
                        cold_default = default;
                    }
                } else {
                    best = best.min(secs(d));
                }
            }
            println!(
                "  ratio {label} default / best of 4, 16, 64 (target <= 1.15)   {:.2}x",
                default / best
            );
            // Cold status, best of 3 (a cold run varies more than a warm one).
            for threads in ["default", "2"] {
                let mut args = vec!["status", t];
                if threads != "default" {
                    args.extend(["--threads", threads]);
                }
                let d = (0..3)
                    .map(|_| {
                        drop_caches();
                        timed(bin, &args)
                    })
                    .min()
                    .unwrap();
                println!("  {label} status, threads {threads:>7}: {:.3} s", secs(d));
                cold_status.push((label.to_string(), threads, d));
            }
        }
        // fuidshift (lxd-tools), cold, forward once, on a copy: the tree the other cases and
        // later runs use stays as idshift left it.
        if Command::new("fuidshift").arg("--help").output().is_ok() {
            let copy = dir.join("fuidshift-copy");
            let _ = std::fs::remove_dir_all(&copy);
            let ok = Command::new("cp").arg("-a").arg(&tree).arg(&copy).status();
            assert!(ok.is_ok_and(|s| s.success()), "cp -a {t}");
            drop_caches();
            let d = timed("fuidshift", &[copy.to_str().unwrap(), map]);
            std::fs::remove_dir_all(&copy).unwrap();
            println!("  fuidshift forward:                {:.3} s", secs(d));
            println!(
                "  ratio fuidshift / {} default, cold        {:.2}x",
                bins[0].0,
                secs(d) / cold_default
            );
        } else {
            println!("  fuidshift: not installed (apt-get install lxd-tools), skipped");
        }
        // The bare walk cold at idshift's default thread count (8 per core, 4 to 64) and at 2.
        let default_threads =
            (std::thread::available_parallelism().map_or(1, |n| n.get()) * 8).clamp(4, 64);
        for (threads, label) in [(default_threads, "default"), (2, "2")] {
            let (d, n) = (0..3)
                .map(|_| {
                    drop_caches();
                    let t0 = Instant::now();
                    let n = bare_walk(&tree, threads);
                    (t0.elapsed(), n)
                })
                .min()
                .unwrap();
            println!(
                "  bare walk (openat+getdents+fstatat+llistxattr), {threads} threads: {:.3} s ({n} names)",
                secs(d)
            );
            // The before build's default is another thread count: compared at 2 threads only.
            let same =
                |c: &&(String, &str, Duration)| c.1 == label && (label == "2" || c.0 == bins[0].0);
            for (who, _, status) in cold_status.iter().filter(same) {
                println!(
                    "  ratio {who} status / bare walk, cold, {threads} threads (target <= 1.10)  {:.2}x",
                    secs(*status) / secs(d)
                );
            }
            if label == "2" {
                for (who, _, status) in cold_status.iter().filter(|c| c.1 == "default") {
                    println!(
                        "  ratio {who} status default / bare walk 2 threads, cold (target < 1)  {:.2}x",
                        secs(*status) / secs(d)
                    );
                }
            }
        }
        // Warm: status against the bare walk on the same threads.
        println!("warm cache, {t}:");
        for threads in [1usize, 2] {
            let n = threads.to_string();
            let _ = bare_walk(&tree, threads);
            let best = |f: &dyn Fn() -> Duration| (0..3).map(|_| f()).min().unwrap();
            let walk = best(&|| {
                let t0 = Instant::now();
                bare_walk(&tree, threads);
                t0.elapsed()
            });
            for (label, bin) in &bins {
                let status = best(&|| timed(bin, &["status", t, "--threads", &n]));
                println!(
                    "  {label} status / bare walk, {threads} threads (target <= 1.10): {:.3} s / {:.3} s = {:.2}x",
                    secs(status),
                    secs(walk),
                    secs(status) / secs(walk)
                );
            }
        }
    } else {
        println!("cold-cache and status cases skipped: no {} (run `IDSHIFT_BENCH_INODES=200000 cargo bench --bench shift` first)", tree.display());
    }

    // migrate: shifted (every inode rewritten) against --idmapped (the config only, once the
    // rootfs is in the host view), on a container whose rootfs is a copy of the big tree.
    let big = format!(
        "tree-{}",
        env_num("IDSHIFT_BENCH_MIGRATE_INODES", 1_000_000)
    );
    match [big.as_str(), "tree-200000"]
        .into_iter()
        .find(|t| dir.join(format!("{t}.complete")).exists())
    {
        Some(t) => {
            if t != big {
                println!("migrate: no complete {big}, using {t} (`IDSHIFT_BENCH_INODES=1000000 cargo bench --bench shift` builds it)");
            }
            migrate_cases(&dir, &dir.join(t), &bins);
        }
        None => println!(
            "migrate cases skipped: no {big} or tree-200000 in {}",
            dir.display()
        ),
    }

    // One huge directory.
    let n = env_num("IDSHIFT_BENCH_FLAT", 300_000);
    let root = flat(&dir, n);
    let r = root.to_str().unwrap();
    println!("one directory of {n} files, warm:");
    for (label, bin) in &bins {
        let mut times = Vec::new();
        for threads in ["1", "2"] {
            let fwd = ["shift", r, map, "--progress", "never", "--threads", threads];
            let back = [
                "shift",
                "-r",
                r,
                map,
                "--progress",
                "never",
                "--threads",
                threads,
            ];
            let f = timed(bin, &fwd);
            let b = timed(bin, &back);
            let f2 = timed(bin, &fwd);
            let b2 = timed(bin, &back);
            let round = (f + b).min(f2 + b2);
            let rss = peak_rss_kib(bin, &fwd);
            timed(bin, &back);
            println!(
                "  {label} --threads {threads}: round trip {:.3} s, peak RSS {}",
                secs(round),
                rss.map_or("? (no python3)".into(), |k| format!(
                    "{:.1} MiB",
                    k as f64 / 1024.0
                ))
            );
            times.push(round);
        }
        println!(
            "  ratio {label} 1 thread / 2 threads (target >= 1.6)              {:.2}x",
            secs(times[0]) / secs(times[1])
        );
    }
}
