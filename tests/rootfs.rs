//! A real Debian rootfs (`../shared/tools/make-rootfs.sh`, path in `IDSHIFT_TEST_ROOTFS`; CI
//! builds it): shift a copy into a container range and look at it through `idshift exec` with
//! the new map, then shift it back and compare.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![trial!(
        real_rootfs_into_a_container_range_and_back,
        Need::Root,
        Need::Rootfs,
        // Run inside the namespace and on the host to read what the shift kept.
        Need::Tool("getcap"),
        Need::Tool("getfacl"),
        Need::Tool("find")
    )])
}

fn sh(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert_code(&out, 0);
    stdout(&out)
}

fn real_rootfs_into_a_container_range_and_back() {
    let Some(_) = require!(Root) else { return };
    let Some(src) = test_rootfs() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    sh(Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(&src)
        .arg(&root));
    // Sample capabilities and ACLs of our own, besides the ones the packages set.
    set_xattr(&root.join("usr/bin/dpkg"), caps::NAME, &CAP_NET_RAW_V2);
    set_xattr(&root.join("etc/debian_version"), acl::ACCESS, &sample_acl());
    set_xattr(&root.join("var/tmp"), acl::DEFAULT, &sample_default_acl());
    let before = snapshot(&root);

    let out = run(&mut idshift(&[
        "shift",
        root.to_str().unwrap(),
        "b:0:100000:65536",
        "--json",
        "--progress",
        "never",
    ]));
    assert_code(&out, 0);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["inodes"].as_u64().unwrap() > 5000, "{summary}");
    assert_eq!(summary["error_count"], 0);

    // Inside a namespace with the new map, every file is owned by a mapped id (unmapped ids
    // show as 65534), passwd is setuid root, and the capabilities are there.
    let r = root.display();
    let inside = |script: String| {
        sh(&mut idshift(&[
            "exec",
            "-m",
            "b:0:100000:65536",
            "--",
            "sh",
            "-c",
            &script,
        ]))
    };
    let unmapped = inside(format!(
        "find {r} -xdev \\( -uid 65534 -o -gid 65534 \\) -print"
    ));
    assert_eq!(unmapped, "", "files owned by unmapped ids");
    assert_eq!(
        inside(format!("stat -c %u:%g:%a {r}/usr/bin/passwd")),
        "0:0:4755\n"
    );
    let caps_inside = inside(format!("getcap {r}/usr/bin/ping {r}/usr/bin/dpkg"));
    assert!(caps_inside.contains("ping cap_net_raw=ep"), "{caps_inside}");
    assert!(caps_inside.contains("dpkg cap_net_raw=ep"), "{caps_inside}");
    assert!(
        !caps_inside.contains("rootid"),
        "seen as the namespace's own: {caps_inside}"
    );
    let acl_inside = inside(format!("getfacl -n {r}/etc/debian_version"));
    assert!(acl_inside.contains("user:1000:rw-"), "{acl_inside}");
    // On the host: rootid 100000.
    let host_caps = sh(Command::new("getcap")
        .arg("-n")
        .arg(root.join("usr/bin/ping")));
    assert!(host_caps.contains("rootid=100000"), "{host_caps}");

    // And back: byte for byte.
    let out = run(&mut idshift(&[
        "shift",
        "-r",
        root.to_str().unwrap(),
        "b:0:100000:65536",
        "--progress",
        "never",
    ]));
    assert_code(&out, 0);
    // The namespace's `find` and `getfacl` read the tree and so set atimes: compare the rest.
    let no_atime = |s: &std::collections::BTreeMap<PathBuf, Meta>| -> Vec<(PathBuf, Meta)> {
        s.iter()
            .map(|(p, m)| {
                (
                    p.clone(),
                    Meta {
                        atime: 0,
                        ..m.clone()
                    },
                )
            })
            .collect()
    };
    let (want, got) = (no_atime(&before), no_atime(&snapshot(&root)));
    let diff: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(a, b)| a != b)
        .take(5)
        .map(|(a, b)| format!("{a:?}\n  became {b:?}"))
        .collect();
    assert_eq!(want.len(), got.len());
    assert!(diff.is_empty(), "not restored:\n{}", diff.join("\n"));
}
