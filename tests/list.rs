//! `idshift list` on real LXC layouts (a running container, a stopped one, a privileged one
//! whose rootfs is missing), and the bash completion that offers container names.

mod common;

use std::process::Command;

use common::lxc::*;
use common::tree::*;
use common::*;

fn main() -> std::process::ExitCode {
    common::harness::main(vec![
        trial!(
            list_shows_state_maps_and_agreement,
            Need::Root,
            Need::Rootfs,
            Need::ScratchXattrs
        ),
        trial!(bash_completion_offers_container_names, Need::Root),
    ])
}

fn list_shows_state_maps_and_agreement() {
    let Some(_) = require!(Root) else { return };
    // A real container, started; no network, an init that just waits.
    let (r, base) = root_container("run1");
    // In a second lxcpath: a stopped container, and a privileged one whose rootfs is gone.
    let sample = tempfile::tempdir().unwrap();
    let small = sample.path().join("rootfs");
    build_sample(&small);
    let s = container(&small, "stop1", 300000, None);
    let p = s.lxcpath.join("priv");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(
        p.join("config"),
        format!("lxc.rootfs.path = dir:{}/gone\n", p.display()),
    )
    .unwrap();
    let out = lxc("lxc-start", &r, &["-d"]);
    assert_code(&out, 0);
    let _started = Started(&r);
    let (l1, l2) = (r.lxcpath.to_str().unwrap(), s.lxcpath.to_str().unwrap());

    let out = run(&mut idshift(&["list", "-P", l1, "-P", l2, "--json"]));
    assert_code(&out, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list["schema"], 1);
    let by_name = |name: &str| {
        list["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .clone()
    };
    let run1 = by_name("run1");
    assert_eq!(run1["state"], "RUNNING", "{run1}");
    assert_eq!(
        run1["configured"]["text"],
        format!("u:0:{base}:65536 g:0:{base}:65536")
    );
    assert_eq!(
        run1["recorded"]["text"],
        format!("u:0:{base}:65536 g:0:{base}:65536")
    );
    assert_eq!(run1["agrees"], true);
    let stop1 = by_name("stop1");
    assert_eq!(stop1["state"], "STOPPED");
    assert_eq!(stop1["agrees"], true);
    assert_eq!(stop1["pending"], serde_json::Value::Null);
    let privileged = by_name("priv");
    assert_eq!(privileged["configured"]["host_view"], true);
    assert_eq!(privileged["agrees"], serde_json::Value::Null);
    assert!(
        privileged["error"].as_str().unwrap().contains("gone"),
        "{privileged}"
    );

    // The rootfs moved under stop1's config (by hand, not by migrate): they disagree.
    let out = run(&mut idshift(&[
        "shift",
        "--container",
        "stop1",
        "-P",
        l2,
        "--to",
        "b:0:400000:65536",
        "--progress",
        "never",
    ]));
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
    let text = stdout(&run(&mut idshift(&["ls", "-P", l2])));
    let row = text.lines().find(|l| l.starts_with("stop1")).unwrap();
    assert!(
        row.contains("recorded u:0:400000:65536") && row.ends_with("NO"),
        "{text}"
    );
    assert!(text.contains("priv: "), "the reason is listed: {text}");

    let out = run(&mut idshift(&["list", "--names", "-P", l1, "-P", l2]));
    assert_code(&out, 0);
    assert_eq!(stdout(&out), "run1\npriv\nstop1\n");
}

/// The bash completion (as `idshift completions bash` prints it) offers the container names
/// of the lxcpath on the line for `migrate NAME` and `--container`, and `auto`/`host` after
/// migrate's `--to`.
fn bash_completion_offers_container_names() {
    let Some(_) = require!(Root) else { return };
    if !on_path("bash") {
        skip("bash is not installed");
    }
    let lxcpath = tempfile::tempdir().unwrap();
    for name in ["web", "db"] {
        std::fs::create_dir(lxcpath.path().join(name)).unwrap();
        std::fs::write(
            lxcpath.path().join(name).join("config"),
            "lxc.uts.name = x\n",
        )
        .unwrap();
    }
    let script = stdout(&run(&mut idshift(&["completions", "bash"])));
    let complete = |words: &str| {
        let program = format!(
            "{script}\nCOMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _idshift_dynamic idshift \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = run_limited(
            Command::new("bash").args(["--norc", "-c", &program]).env(
                "PATH",
                format!(
                    "{}:{}",
                    bin().parent().unwrap().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            std::time::Duration::from_secs(20),
        )
        .expect("bash completion hung");
        let mut got: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        got.sort();
        got
    };
    let p = lxcpath.path().display();
    assert_eq!(
        complete(&format!("idshift migrate -P {p} ''")),
        ["db", "web"]
    );
    assert_eq!(complete(&format!("idshift migrate -P {p} w")), ["web"]);
    assert_eq!(
        complete(&format!("idshift status -P {p} --container ''")),
        ["db", "web"]
    );
    assert_eq!(
        complete(&format!("idshift migrate -P {p} web --to ''")),
        ["auto", "host"]
    );
    // Other places are clap_complete's: subcommands.
    assert!(complete("idshift l").contains(&"list".to_string()));
}
