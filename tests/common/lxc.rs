//! An LXC container laid out as `lxc-create` (download template, unprivileged) writes it:
//! LXCPATH/NAME/config and LXCPATH/NAME/rootfs, the rootfs shifted into the container's range.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{assert_code, idshift, run, TestUser};

pub struct Container {
    /// Keeps the directory alive; LXCPATH is inside it.
    pub tmp: tempfile::TempDir,
    pub lxcpath: PathBuf,
    pub name: String,
    pub rootfs: PathBuf,
    pub config: PathBuf,
}

/// The config `lxc-create -t download` writes for an unprivileged container whose ids start at
/// `base`.
pub fn config_text(lxcpath: &Path, name: &str, base: u32) -> String {
    format!(
        "# Template used to create this container: /usr/share/lxc/templates/lxc-download\n\
         # Parameters passed to the template: -d debian -r bookworm -a amd64\n\
         # For additional config options, please look at lxc.container.conf(5)\n\
         \n\
         # Uncomment the following line to support nesting containers:\n\
         #lxc.include = /usr/share/lxc/config/nesting.conf\n\
         # (Be aware this has security implications)\n\
         \n\
         \n\
         # Distribution configuration\n\
         lxc.include = /usr/share/lxc/config/common.conf\n\
         lxc.include = /usr/share/lxc/config/userns.conf\n\
         lxc.arch = linux64\n\
         \n\
         # Container specific configuration\n\
         lxc.idmap = u 0 {base} 65536\n\
         lxc.idmap = g 0 {base} 65536\n\
         lxc.rootfs.path = dir:{}/{name}/rootfs\n\
         lxc.uts.name = {name}\n\
         \n\
         # Network configuration\n\
         lxc.net.0.type = veth\n\
         lxc.net.0.link = lxcbr0\n\
         lxc.net.0.flags = up\n",
        lxcpath.display()
    )
}

/// A container NAME under a fresh LXCPATH (in /var/tmp, reachable by every user) whose rootfs
/// is a copy of `src` (a host-view tree) shifted into `base`; owned by `owner` (the LXCPATH,
/// the container directory and its config) when given. Needs root.
pub fn container(src: &Path, name: &str, base: u32, owner: Option<&TestUser>) -> Container {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lxcpath = tmp.path().join("lxc");
    let dir = lxcpath.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = dir.join("rootfs");
    let out = run(Command::new("cp").arg("-a").arg(src).arg(&rootfs));
    assert_code(&out, 0);
    let out = run(&mut idshift(&[
        "shift",
        rootfs.to_str().unwrap(),
        &format!("b:0:{base}:65536"),
        "--progress",
        "never",
    ]));
    assert_code(&out, 0);
    let config = dir.join("config");
    std::fs::write(&config, config_text(&lxcpath, name, base)).unwrap();
    if let Some(u) = owner {
        for p in [&lxcpath, &dir, &config] {
            std::os::unix::fs::chown(p, Some(u.uid), Some(u.gid)).unwrap();
        }
    }
    Container {
        tmp,
        lxcpath,
        name: name.to_string(),
        rootfs,
        config,
    }
}

impl Container {
    pub fn config_now(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }

    /// `ARGS... NAME -P LXCPATH` for a container command.
    pub fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend([self.name.as_str(), "-P", self.lxcpath.to_str().unwrap()]);
        v
    }
}

/// `tool -n NAME -P LXCPATH REST...` (lxc-start, lxc-attach, lxc-info, lxc-stop).
pub fn lxc(tool: &str, c: &Container, rest: &[&str]) -> Output {
    let mut cmd = Command::new(tool);
    cmd.args(["-n", &c.name, "-P", c.lxcpath.to_str().unwrap()])
        .args(rest);
    run(&mut cmd)
}

/// Stops the container when the test ends, however it ends.
pub struct Started<'a>(pub &'a Container);

impl Drop for Started<'_> {
    fn drop(&mut self) {
        let _ = lxc("lxc-stop", self.0, &["-k"]);
    }
}

/// The config as this machine can start it: no network (there may be no lxcbr0) and an init
/// that just waits.
pub fn startable(config: &str) -> String {
    config.replace(
        "lxc.net.0.type = veth\nlxc.net.0.link = lxcbr0\nlxc.net.0.flags = up\n",
        "lxc.net.0.type = empty\nlxc.init.cmd = /bin/sleep 600\n",
    )
}

/// Starts the container, asserts that its root sees `/usr/bin/passwd` as `0:0 4755`, stops it.
/// On a failed start, the ERROR and WARN lines of LXC's log and the config are in the message.
pub fn boots_with_passwd_root_setuid(c: &Container) {
    let log = c.tmp.path().join("lxc.log");
    let out = lxc(
        "lxc-start",
        c,
        &["-d", "-l", "INFO", "-o", log.to_str().unwrap()],
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "lxc-start: {errors:#?}\n{}",
        c.config_now()
    );
    let _started = Started(c);
    let out = lxc(
        "lxc-attach",
        c,
        &["--", "stat", "-c", "%u:%g %a", "/usr/bin/passwd"],
    );
    assert_eq!(
        super::stdout(&out),
        "0:0 4755\n",
        "{}\n{errors:#?}",
        super::stderr(&out)
    );
}

/// A copy of the test rootfs as container NAME of root's, in root's own delegated range (LXC
/// maps it through newuidmap), with a config this machine can start ([`startable`]), and that
/// range; the test is skipped, saying why, without LXC or a range for root. The caller has
/// required root and the rootfs.
pub fn root_container(name: &str) -> (Container, u32) {
    let Some(src) = super::test_rootfs() else {
        super::harness::skip("no test rootfs (run .ci/setup-test-env)");
    };
    if !super::on_path("lxc-start") {
        super::harness::skip("LXC is not installed (run .ci/setup-test-env)");
    }
    let Some(base) = super::root_range() else {
        super::harness::skip(
            "root has no range of 65536 ids in /etc/subuid (run .ci/setup-test-env)",
        );
    };
    let c = container(&src, name, base, None);
    std::fs::write(&c.config, startable(&c.config_now())).unwrap();
    (c, base)
}
