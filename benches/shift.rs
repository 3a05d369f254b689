//! `idshift shift` on a large synthetic tree, against the speed of light and against fuidshift,
//! measured in one run and reported as ratios.
//!
//! `cargo bench --bench shift` as root. Environment:
//! - `IDSHIFT_BENCH_INODES` (default 1000000): the size of the tree;
//! - `IDSHIFT_BENCH_DIR` (default `/var/tmp/idshift-bench`): where trees are built and kept
//!   (a tree of a given size is reused by later runs);
//! - `IDSHIFT_BENCH_ROUNDS` (default 2): each case runs this many times, the best is kept;
//! - `IDSHIFT_BENCH_BEFORE`: another idshift (the build before a change), whose plain and
//!   overlapping shifts are measured in the same run, with the ratios after / before.
//!
//! The tree has the shape `(dirs, files_per_dir)` ≈ (inodes / 20, 17): files of 0–4 KiB, one
//! symlink and one hardlink per directory, a setuid file every 100 directories, a file
//! capability every 500 and an ACL every 200. Every case shifts it into `b:0:100000:65536` and
//! back, so the tree ends as it began:
//! - `idshift` with all cores and with `--threads 1`;
//! - `idshift` with overlapping ranges (host view → `b:0:7:65536`: every id it changes is also
//!   one it could still have to change, so every changed inode is journaled first);
//! - the baseline: a minimal parallel walker on the same threads that only does `fstatat` +
//!   `fchownat` per inode (and `getdents` per directory) — the speed of light;
//! - the floor: the same walker with the one `listxattrat` per inode that no tool keeping
//!   capabilities and ACLs can skip — the least a correct shift does;
//! - `fuidshift` (Debian package lxd-tools) when installed;
//! - `idshift mount`, the zero-copy alternative: an idmapped bind mount shows the tree shifted
//!   (forward: mount and stat its root through it; back: umount). Nothing on disk changes.
//!
//! It also reports the peak RSS of idshift on this tree and on one a tenth of its size.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};
use nix::unistd::{fchownat, Gid, Uid};
use rayon::prelude::*;

const FILES_PER_DIR: usize = 17;
const CAP_NET_RAW_V2: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds the tree (or reuses a complete one): 20 inodes per directory, 100 directories per
/// parent, so ~50,000 directories for 1,000,000 inodes.
fn generate(root: &Path, inodes: u64) -> u64 {
    let done = root.with_extension("complete");
    if done.exists() {
        return std::fs::read_to_string(&done)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let dirs = (inodes / 20).max(1) as usize;
    eprintln!("building {} ({dirs} directories)…", root.display());
    let t = Instant::now();
    // Directory i lives under top/(i / 100)/d(i).
    (0..dirs.div_ceil(100)).into_par_iter().for_each(|top| {
        std::fs::create_dir(root.join(format!("t{top:04}"))).unwrap();
        for i in top * 100..((top + 1) * 100).min(dirs) {
            let d = dir_path(root, i);
            std::fs::create_dir(&d).unwrap();
            for f in 0..FILES_PER_DIR {
                let size = (i * 7 + f * 131) % 4097;
                std::fs::write(d.join(format!("f{f:02}")), vec![b'x'; size]).unwrap();
            }
            symlink(format!("f{:02}", i % FILES_PER_DIR), d.join("link")).unwrap();
            std::fs::hard_link(d.join("f00"), d.join("hard")).unwrap();
            set_special(&d, i);
            if i % 200 == 0 {
                let ok = Command::new("setfacl")
                    .args(["-m", "u:1000:rw,g:100:r"])
                    .arg(d.join("f03"))
                    .status();
                assert!(
                    ok.map(|s| s.success()).unwrap_or(false),
                    "setfacl (package acl) is needed"
                );
            }
        }
    });
    let count = Command::new("find")
        .arg(root)
        .args(["-xdev"])
        .output()
        .unwrap();
    let n = count.stdout.iter().filter(|&&b| b == b'\n').count() as u64;
    // `find` lists a hardlinked inode once per name; count inodes, as the tools do.
    let n = n - dirs as u64;
    std::fs::write(&done, n.to_string()).unwrap();
    eprintln!("built {n} inodes in {:.0} s", t.elapsed().as_secs_f64());
    n
}

/// Directory `i`'s setuid file and capability (what a chown without restoring loses).
fn set_special(d: &Path, i: usize) {
    if i % 100 == 0 {
        std::fs::set_permissions(d.join("f01"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    }
    if i % 500 == 0 {
        set_xattr(&d.join("f02"), "security.capability", &CAP_NET_RAW_V2);
    }
}

fn dir_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("t{:04}", i / 100))
        .join(format!("d{i:06}"))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let parent = std::fs::File::open(path.parent().unwrap()).unwrap();
    let file = std::ffi::CString::new(path.file_name().unwrap().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    use std::os::fd::AsFd;
    idshift::sys::xattr::set(parent.as_fd(), Some(&file), &name, value).unwrap();
}

/// What a shift must not lose, as `idshift status` counts it: setuid files, file
/// capabilities, access ACLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Keep {
    setuid: u64,
    caps: u64,
    acls: u64,
}

fn keep(idshift: &str, tree: &Path) -> Keep {
    let out = Command::new(idshift)
        .args(["status", "--json"])
        .arg(tree)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Keep {
        setuid: n("setuid_files"),
        caps: n("caps_v2") + n("caps_v3"),
        acls: n("acl_access"),
    }
}

/// The tree as the generator makes it: `dirs / 100` setuid files, `dirs / 500` capabilities,
/// `dirs / 200` ACLs (rounded up: directory 0 has all three).
fn expected(inodes: u64) -> Keep {
    let dirs = (inodes / 20).max(1);
    Keep {
        setuid: dirs.div_ceil(100),
        caps: dirs.div_ceil(500),
        acls: dirs.div_ceil(200),
    }
}

/// A tree of the generator's shape: setuid bits and capabilities a tool dropped are set again
/// (ids are back where they were after every round trip); rebuilt if that is not enough.
fn intact_tree(idshift: &str, root: &Path, inodes: u64) -> u64 {
    if root.with_extension("complete").exists() && keep(idshift, root) != expected(inodes) {
        eprintln!(
            "{}: setting dropped setuid bits and capabilities again",
            root.display()
        );
        (0..(inodes / 20).max(1) as usize).for_each(|i| set_special(&dir_path(root, i), i));
        if keep(idshift, root) != expected(inodes) {
            eprintln!("{}: damaged, rebuilding", root.display());
            let _ = std::fs::remove_file(root.with_extension("complete"));
        }
    }
    let n = generate(root, inodes);
    nix::unistd::sync();
    n
}

/// The two bare walkers measured beside idshift, by case name: the speed of light, and the
/// floor of a correct shift (`probe`: one `listxattrat` per inode more).
const WALKERS: [(&str, bool); 2] = [
    ("baseline fstatat+fchownat", false),
    ("floor fstatat+listxattr+fchownat", true),
];

/// The speed of light: per inode one `fstatat` and one `fchownat`, nothing else; with `probe`,
/// also the one `listxattrat` no tool that keeps capabilities and ACLs can do without (the
/// floor of a correct shift).
fn baseline_dir(dir: &Dir, delta: i64, probe: bool) -> u64 {
    use std::os::fd::AsFd;
    let fd = dir.as_fd();
    let mut sub = Vec::new();
    let mut n = 0;
    let mut it = Dir::openat(fd, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    for e in it.iter() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let st = fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
        if probe {
            let _ = idshift::sys::xattr::list(fd, Some(name));
        }
        let shift = |id: u32| (id as i64 + delta) as u32;
        let (uid, gid) = (shift(st.st_uid), shift(st.st_gid));
        fchownat(
            fd,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        n += 1;
        if e.file_type() == Some(Type::Directory) {
            sub.push(name.to_owned());
        }
    }
    n + sub
        .par_iter()
        .map(|name| {
            let d = Dir::openat(
                fd,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .unwrap();
            baseline_dir(&d, delta, probe)
        })
        .sum::<u64>()
}

fn baseline(root: &Path, threads: usize, delta: i64, probe: bool) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let d = Dir::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        baseline_dir(&d, delta, probe);
    });
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Forward and back; returns the time of the forward shift and of the whole round trip.
fn time_round_trip(forward: &mut dyn FnMut(), back: &mut dyn FnMut()) -> (Duration, Duration) {
    let t = Instant::now();
    forward();
    let f = t.elapsed();
    back();
    (f, t.elapsed())
}

/// Peak RSS of a command, in KiB: a fresh python3 runs it and reads RUSAGE_CHILDREN, which then
/// holds that command alone. `None` without python3.
fn peak_rss_kib(cmd: &mut Command) -> Option<u64> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import resource, subprocess, sys\n\
             subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n\
             print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("shift benchmark skipped: needs root (it chowns a large tree)");
        return;
    }
    let inodes = env_num("IDSHIFT_BENCH_INODES", 1_000_000);
    let rounds = env_num("IDSHIFT_BENCH_ROUNDS", 2);
    let base = PathBuf::from(
        std::env::var("IDSHIFT_BENCH_DIR").unwrap_or_else(|_| "/var/tmp/idshift-bench".into()),
    );
    std::fs::create_dir_all(&base).unwrap();
    let root = base.join(format!("tree-{inodes}"));
    let idshift = env!("CARGO_BIN_EXE_idshift");
    let n = intact_tree(idshift, &root, inodes);
    let want = expected(inodes);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let map = "b:0:100000:65536";
    let r = root.to_str().unwrap();
    // Warm the caches: one read-only scan.
    run(Command::new(idshift).args(["status", r]));

    let mut results: Vec<(String, Duration, Duration, String)> = Vec::new();
    let mut measure =
        |name: &str, rounds: u64, forward: &mut dyn FnMut(), back: &mut dyn FnMut()| {
            let mut best = (Duration::MAX, Duration::MAX);
            for _ in 0..rounds {
                // No writeback of earlier work in the timed window.
                nix::unistd::sync();
                let (f, rt) = time_round_trip(forward, back);
                best = (best.0.min(f), best.1.min(rt));
            }
            // What the round trip kept (the baseline restores no mode bits or capabilities).
            let got = keep(idshift, &root);
            let lost = if got == want {
                "nothing".to_string()
            } else {
                format!(
                    "{} of {} setuid, {} of {} caps, {} of {} ACLs",
                    want.setuid - got.setuid.min(want.setuid),
                    want.setuid,
                    want.caps - got.caps.min(want.caps),
                    want.caps,
                    want.acls - got.acls.min(want.acls),
                    want.acls
                )
            };
            eprintln!(
                "  {name}: {:.2} s forward, lost {lost}",
                best.0.as_secs_f64()
            );
            results.push((name.to_string(), best.0, best.1, lost));
            intact_tree(idshift, &root, inodes);
        };
    let nt = threads.to_string();
    // `BIN shift` into or back from (-r) `map` on `threads` threads.
    let shift_by = |bin: &str, map: &str, reverse: bool, threads: &str| {
        let mut args = vec!["shift", r, map, "--progress", "never", "--threads", threads];
        if reverse {
            args.push("-r");
        }
        run(Command::new(bin).args(args));
    };
    let shift = |reverse: bool, threads: &str| shift_by(idshift, map, reverse, threads);
    let overlapping = "b:0:7:65536";
    let before = std::env::var("IDSHIFT_BENCH_BEFORE").ok();
    let mut builds = vec![("", idshift)];
    builds.extend(before.as_deref().map(|b| ("before: ", b)));
    for (label, bin) in &builds {
        measure(
            &format!("{label}idshift shift, {threads} threads"),
            rounds,
            &mut || shift_by(bin, map, false, &nt),
            &mut || shift_by(bin, map, true, &nt),
        );
        measure(
            &format!("{label}idshift shift, overlapping, {threads} threads"),
            rounds,
            &mut || shift_by(bin, overlapping, false, &nt),
            &mut || shift_by(bin, overlapping, true, &nt),
        );
    }
    let dst = base.join("mnt");
    std::fs::create_dir_all(&dst).unwrap();
    let d = dst.to_str().unwrap();
    measure(
        "idshift mount (idmapped, nothing written)",
        rounds,
        &mut || {
            run(Command::new(idshift).args(["mount", "-m", map, r, d]));
            let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dst).unwrap());
            assert_eq!(owner, 100000, "the mount does not show the tree shifted");
        },
        &mut || run(Command::new(idshift).args(["umount", d])),
    );
    for (name, probe) in WALKERS {
        measure(
            &format!("{name}, {threads} threads"),
            rounds,
            &mut || baseline(&root, threads, 100000, probe),
            &mut || baseline(&root, threads, -100000, probe),
        );
    }
    measure(
        "idshift shift, --threads 1",
        rounds,
        &mut || shift(false, "1"),
        &mut || shift(true, "1"),
    );
    for (name, probe) in WALKERS {
        measure(
            &format!("{name}, 1 thread"),
            rounds,
            &mut || baseline(&root, 1, 100000, probe),
            &mut || baseline(&root, 1, -100000, probe),
        );
    }
    let have_fuidshift = Command::new("fuidshift").arg("--help").output().is_ok();
    if have_fuidshift {
        // fuidshift is slow: one round.
        measure(
            "fuidshift (LXD 5.0)",
            1,
            &mut || run(Command::new("fuidshift").args([r, map])),
            &mut || run(Command::new("fuidshift").args([r, map, "-r"])),
        );
    }

    println!("shift of {n} inodes into {map} and back (best of {rounds}; fuidshift once):");
    println!(
        "  {:<44} {:>9} {:>12} {:>11}  lost in the round trip",
        "case", "forward", "inodes/s", "round trip"
    );
    for (name, f, rt, lost) in &results {
        // A mount walks nothing: its time is not a rate.
        let rate = if name.starts_with("idshift mount") {
            "-".to_string()
        } else {
            format!("{:.0}", n as f64 / f.as_secs_f64())
        };
        println!(
            "  {name:<44} {:>8.4}s {rate:>12} {:>10.4}s  {lost}",
            f.as_secs_f64(),
            rt.as_secs_f64()
        );
    }
    let get = |prefix: &str| {
        results
            .iter()
            .find(|r| r.0.starts_with(prefix))
            .map(|r| r.2.as_secs_f64())
    };
    let ratio = |label: &str, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            println!("  ratio {label:<58} {:.2}x", a / b);
        }
    };
    let [(baseline_name, _), (floor_name, _)] = WALKERS;
    for (label, name) in [
        (
            "idshift / baseline, all threads (target <= 1.25)",
            baseline_name,
        ),
        (
            "idshift / floor (baseline + listxattr), all threads",
            floor_name,
        ),
    ] {
        ratio(
            label,
            get(&format!("idshift shift, {threads}")),
            get(&format!("{name}, {threads}")),
        );
    }
    for (label, name) in [
        ("idshift / baseline, 1 thread", baseline_name),
        (
            "idshift / floor (baseline + listxattr), 1 thread",
            floor_name,
        ),
    ] {
        ratio(
            label,
            get("idshift shift, --threads 1"),
            get(&format!("{name}, 1")),
        );
    }
    ratio(
        "fuidshift / idshift (target >= 15)",
        get("fuidshift"),
        get(&format!("idshift shift, {threads}")),
    );
    let forward = |prefix: &str| {
        results
            .iter()
            .find(|r| r.0.starts_with(prefix))
            .map(|r| r.1.as_secs_f64())
    };
    ratio(
        "shift / mount, forward (time to present the tree shifted)",
        forward(&format!("idshift shift, {threads}")),
        forward("idshift mount"),
    );
    ratio(
        "idshift 1 thread / all threads (parallel speed-up)",
        get("idshift shift, --threads 1"),
        get(&format!("idshift shift, {threads}")),
    );
    ratio(
        "overlapping / plain ranges, all threads",
        get(&format!("idshift shift, overlapping, {threads}")),
        get(&format!("idshift shift, {threads}")),
    );
    if before.is_some() {
        for case in ["idshift shift, ", "idshift shift, overlapping, "] {
            ratio(
                &format!("after / before: {case}{threads} threads"),
                get(&format!("{case}{threads}")),
                get(&format!("before: {case}{threads}")),
            );
        }
    }
    if !have_fuidshift {
        println!("  fuidshift: not installed (apt-get install lxd-tools), skipped");
    }

    // Peak RSS on this tree and on one a tenth its size.
    let small = base.join(format!("tree-{}", inodes / 10));
    let n_small = intact_tree(idshift, &small, inodes / 10);
    for (tree, count) in [(&small, n_small), (&root, n)] {
        let t = tree.to_str().unwrap();
        match peak_rss_kib(Command::new(idshift).args(["shift", t, map, "--progress", "never"])) {
            Some(kib) => println!(
                "  peak RSS of idshift shift on {count} inodes: {:.1} MiB",
                kib as f64 / 1024.0
            ),
            None => println!("  peak RSS: python3 not available, skipped"),
        }
        run(Command::new(idshift).args(["shift", t, "-r", map, "--progress", "never"]));
    }
}
