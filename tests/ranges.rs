//! `idshift ranges` against the real /etc/subuid and /etc/subgid of the test user.

mod common;

use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![trial!(
        ranges_of_the_test_user_with_containers,
        Need::Root,
        Need::TestUser
    )])
}

fn ranges_of_the_test_user_with_containers() {
    let Some(env) = require!(TestUser) else {
        return;
    };
    let lxc = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lxc.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, base) in [("c1", 200000), ("c2", 200000)] {
        std::fs::create_dir(lxc.path().join(name)).unwrap();
        std::fs::write(
            lxc.path().join(name).join("config"),
            format!("lxc.idmap = u 0 {base} 65536\nlxc.idmap = g 0 {base} 65536\n"),
        )
        .unwrap();
    }
    let p = lxc.path().to_str().unwrap();
    let out = run(&mut idshift(&[
        "ranges",
        &env.user().name,
        "-P",
        p,
        "--json",
    ]));
    assert_code(&out, 0);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // .ci/setup-test-env: NAME:200000:65536 and UID:300000:65536.
    assert_eq!(
        r["subuid"],
        serde_json::json!(["200000:65536", "300000:65536"])
    );
    assert_eq!(r["containers"].as_array().unwrap().len(), 2);
    assert_eq!(r["overlaps"][0], "c1 and c2 share host uids 200000-265535");
    assert_eq!(r["first_free_block"], 300000);
    // As the user itself, by default.
    let out = run(&mut idshift_as(env.user(), &["ranges", "-P", p]));
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("first free block: 300000"),
        "{}",
        stdout(&out)
    );
    let out = run(&mut idshift(&["ranges", "no-such-user-x"]));
    assert_code(&out, 2);
    assert_eq!(stderr(&out), "idshift: no such user: 'no-such-user-x'\n");
}
