//! Privilege boundaries (issue 9): what a container's code under `exec --rootfs` cannot reach,
//! a setuid idshift, `mount`'s nosuid and `umount` of mounts idshift did not make.
//!
//! The hostile programs are tiny static C programs compiled by the test (`cc -static`); the
//! tests that need them are skipped, visibly, where no static C compiler is installed.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

/// A setuid (or setgid) copy of idshift refuses to run, whatever it was asked, before it parses
/// its arguments: the privilege boundary is newuidmap/newgidmap.
#[test]
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
