//! Links the unwinder statically where the C compiler has it (`libgcc_eh.a`, what
//! `gcc -static-libgcc` links), so that the dynamic loader maps one shared library fewer
//! (`libgcc_s.so.1`) when idshift starts: `exec` is measured against `unshare`, and in a VM each
//! mapped library costs page faults worth ~5% of its start-up (`cargo bench --bench exec`).
//! Unwinding and backtraces work as before (Rust's static targets use the same archive). Where
//! the archive is not found, nothing changes and `libgcc_s` is linked as usual.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let static_crt = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .unwrap_or_default()
        .split(',')
        .any(|f| f == "crt-static");
    if os != "linux" || env != "gnu" || static_crt {
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
