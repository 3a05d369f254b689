//! `idshift demo`, the README's first command.

mod common;

use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(
            demo_shows_the_shift_and_cleans_up,
            Need::Root,
            Need::ScratchXattrs
        ),
        trial!(
            demo_without_root_says_what_it_needs,
            Need::Root,
            Need::TestUser
        ),
    ])
}

fn demo_shows_the_shift_and_cleans_up() {
    let Some(_) = require!(Root) else { return };
    let out = run(&mut idshift(&["demo"]));
    assert_code(&out, 0);
    let text = stdout(&out);
    for want in [
        "appears to use:  host view",
        "owner 0:0 -> 100000:100000, mode 4755 restored",
        "capability rewritten",
        "ACL remapped",
        "appears to use:  b:0:100000:65536 (every id lies within it)",
        "file capabilities: 0 v2 (rootid 0), 1 v3 (rootids: 100000 ×1)",
        "-rwsr-xr-x 1 100000 100000",
        "/etc/passwd (behind etc/passwd-of-the-host): owner 0:0",
        "uid=0(root) gid=0(root)",
        "-rwsr-xr-x 1 0 0",
        "usr/bin/ping cap_net_raw=ep",
        "user:1001:r--",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let removed = text.lines().last().unwrap();
    let dir = removed.trim_start_matches("Removed ").trim_end_matches('.');
    assert!(removed.starts_with("Removed "), "{removed}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

fn demo_without_root_says_what_it_needs() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let out = run(&mut idshift_as(env.user(), &["demo"]));
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(err.starts_with("idshift: demo needs root"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
