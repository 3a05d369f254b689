//! `idshift ranges` against the real /etc/subuid and /etc/subgid of the test user.

mod common;

use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(
            ranges_of_the_test_user_with_containers,
            Need::Root,
            Need::TestUser
        ),
        trial!(
            other_users_delegations_and_pending_targets_are_never_free,
            Need::Root,
            Need::ScratchXattrs
        ),
    ])
}

/// `cmd` in a private mount namespace where /etc/subuid and /etc/subgid are `subid` (the real
/// files are not touched).
fn with_subid(subid: &std::path::Path, args: &[&str]) -> std::process::Output {
    let script = format!(
        "mount --bind {0} /etc/subuid && mount --bind {0} /etc/subgid && exec \"$@\"",
        subid.display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(bin())
        .args(args);
    run(&mut cmd)
}

/// Root's ranges in a private /etc/subuid: R1 (2000000) used by container c1, R2 (3000000)
/// also delegated to another user, R3 (3100000) the target of c2's unfinished migrate (its
/// rootfs records a map its config does not name yet), R4 (3200000) free. `ranges` names the
/// other user's line and the pending target; `--to auto` picks R4.
fn other_users_delegations_and_pending_targets_are_never_free() {
    let Some(_) = require!(Root) else { return };
    if !on_path("unshare") {
        skip("unshare (util-linux) is not installed");
    }
    let sample = tempfile::tempdir().unwrap();
    let src = sample.path().join("rootfs");
    common::tree::build_sample(&src);
    let c1 = common::lxc::container(&src, "c1", 2_000_000, None);
    let lxcpath = c1.lxcpath.to_str().unwrap();
    // c2: config at 400000, rootfs already moved to R3 by a migrate that did not get to the
    // config.
    let c2 = c1.lxcpath.join("c2");
    std::fs::create_dir_all(&c2).unwrap();
    let out = run(std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(c2.join("rootfs")));
    assert_code(&out, 0);
    let rootfs2 = c2.join("rootfs");
    let shift = run(&mut idshift(&[
        "shift",
        rootfs2.to_str().unwrap(),
        "b:0:3100000:65536",
        "--progress",
        "never",
    ]));
    assert_code(&shift, 0);
    std::fs::write(
        c2.join("config"),
        common::lxc::config_text(&c1.lxcpath, "c2", 400000),
    )
    .unwrap();
    let subid = sample.path().join("subid");
    std::fs::write(
        &subid,
        "root:2000000:65536\nroot:3000000:65536\nother-user:3010000:100\n\
         root:3100000:65536\nroot:3200000:65536\n",
    )
    .unwrap();
    let out = with_subid(&subid, &["ranges", "root", "-P", lxcpath, "--json"]);
    assert_code(&out, 0);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["first_free_block"], 3_200_000, "{r}");
    let shared = r["shared_with_others"].as_array().unwrap();
    assert_eq!(shared.len(), 2, "uid and gid lines: {r}");
    assert_eq!(shared[0]["owner"], "other-user");
    assert_eq!(
        shared[0]["shared"],
        serde_json::json!({"kind": "uid", "start": 3010000, "count": 100})
    );
    let c2_entry = &r["containers"].as_array().unwrap()[1];
    assert_eq!(c2_entry["name"], "c2");
    assert_eq!(
        c2_entry["pending_target"]["uid"][0]["host"], 3_100_000,
        "{r}"
    );
    let text = stdout(&with_subid(&subid, &["ranges", "root", "-P", lxcpath]));
    assert!(text.contains("also delegated to other-user"), "{text}");
    assert!(
        text.contains("unfinished migrate or shift to u:0:3100000:65536"),
        "{text}"
    );

    // migrate --to auto skips R2 (shared) and R3 (pending): R4.
    let out = with_subid(
        &subid,
        &["migrate", "c1", "-P", lxcpath, "--to", "auto", "--dry-run"],
    );
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("would name 'u:0:3200000:65536 g:0:3200000:65536'"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
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
