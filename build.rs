//! Two link-time choices for the Linux binary, both about what the dynamic loader must do when
//! idshift starts (`exec` is measured against `unshare`, and in a VM every page fault of the
//! start-up counts: `cargo bench --bench exec`):
//!
//! - The unwinder is linked statically where the C compiler has it (`libgcc_eh.a`, what
//!   `gcc -static-libgcc` links), so that `libgcc_s.so.1` is not mapped: ~5% of the start-up.
//!   Unwinding and backtraces work as before (Rust's static targets use the same archive).
//!   Where the archive is not found, or when cross-compiling (the host's compiler would name
//!   the host's archive), nothing changes and `libgcc_s` is linked as usual.
//! - `pow`, which `src/sys/pow.rs` defines so that `libm.so.6` is not loaded, is kept out of
//!   the executable's dynamic symbol table (a version script making it local): the linker would
//!   otherwise export it, since a library on the link line defines it too, and a library loaded
//!   later (an NSS module) would then call idshift's `pow` instead of the C library's.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    let out = PathBuf::from(var("OUT_DIR")).join("local-pow.ver");
    std::fs::write(&out, "{ local: pow; };\n").expect("write the version script");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--version-script={}",
        out.display()
    );

    let static_crt = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    if var("CARGO_CFG_TARGET_ENV") != "gnu" || static_crt || var("HOST") != var("TARGET") {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    // `cc` prints the bare name when it has no such file.
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_absolute() || !path.is_file() {
        return;
    }
    if let Some(dir) = path.parent() {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
}
