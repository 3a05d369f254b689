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
    let (a, b) = env.user().ranges;
    let a_last = a + 65535;
    let lxc = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lxc.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, base) in [("c1", a), ("c2", a)] {
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
    // .ci/setup-test-env: NAME:A:65536 and UID:B:65536; the containers use A, so B is free.
    assert_eq!(r["schema"], 1);
    assert_eq!(
        r["subuid"],
        serde_json::json!([{"start": a, "count": 65536}, {"start": b, "count": 65536}])
    );
    assert_eq!(r["containers"].as_array().unwrap().len(), 2);
    assert_eq!(r["containers"][0]["map"]["uid"][0]["host"], a);
    assert_eq!(
        r["overlaps"][0],
        serde_json::json!({"a": "c1", "b": "c2", "shared": {"kind": "uid", "start": a, "count": 65536}})
    );
    let text = stdout(&run(&mut idshift(&["ranges", &env.user().name, "-P", p])));
    assert!(
        text.contains(&format!("overlap: c1 and c2 share host uids {a}-{a_last}")),
        "{text}"
    );
    assert_eq!(r["first_free_block"], b);
    // As the user itself, by default.
    let out = run(&mut idshift_as(env.user(), &["ranges", "-P", p]));
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains(&format!("first free block: {b}")),
        "{}",
        stdout(&out)
    );
    let out = run(&mut idshift(&["ranges", "no-such-user-x"]));
    assert_code(&out, 2);
    assert_eq!(stderr(&out), "idshift: no such user: 'no-such-user-x'\n");
}
