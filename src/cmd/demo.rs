//! `idshift demo`: the main job on a built-in example. Builds a small rootfs-like tree in a
//! temporary directory (a setuid file, a file capability, ACLs, a hardlink, a symlink out of the
//! tree), shows its status, shifts it into a container range, shows the status again and lists
//! it through `exec` as container root, then removes it.

use std::ffi::CStr;
use std::os::fd::AsFd;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap};
use crate::report::{self, escape_path, Printer};
use crate::shift::{self, acl, caps, View};
use crate::status;
use crate::sys::xattr;

/// The container range of the demo.
pub const MAP: &str = "b:0:100000:65536";

/// `cap_net_raw+ep` as `setcap` stores it for host root (revision 2).
const CAP_NET_RAW_V2: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Removes the demo directory when dropped.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn set_xattr(path: &Path, name: &CStr, value: &[u8]) -> Result<()> {
    let parent = std::fs::File::open(path.parent().expect("has a parent")).map_err(io(path))?;
    let file = std::ffi::CString::new(path.file_name().expect("named").as_encoded_bytes())
        .expect("no NUL");
    xattr::set(parent.as_fd(), Some(&file), name, value).map_err(|e| {
        Error::sys(
            format!("{}: set {}", escape_path(path), name.to_string_lossy()),
            e,
        )
    })
}

fn write(path: &Path, text: &str, uid: u32, gid: u32, mode: u32) -> Result<()> {
    std::fs::write(path, text).map_err(io(path))?;
    own(path, uid, gid, mode)
}

fn own(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    lchown(path, Some(uid), Some(gid)).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

/// Builds the sample tree at `root`, in the host view.
fn build(root: &Path) -> Result<()> {
    for (d, uid, gid, mode) in [
        ("", 0, 0, 0o755),
        ("bin", 0, 0, 0o755),
        ("etc", 0, 0, 0o755),
        ("usr", 0, 0, 0o755),
        ("usr/bin", 0, 0, 0o755),
        ("home", 0, 0, 0o755),
        ("home/alice", 1000, 1000, 0o750),
        ("tmp", 0, 0, 0o1777),
    ] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
        own(&p, uid, gid, mode)?;
    }
    write(
        &root.join("usr/bin/passwd"),
        "#!/bin/sh\necho passwd\n",
        0,
        0,
        0o4755,
    )?;
    write(
        &root.join("usr/bin/ping"),
        "#!/bin/sh\necho ping\n",
        0,
        0,
        0o755,
    )?;
    set_xattr(&root.join("usr/bin/ping"), caps::NAME, &CAP_NET_RAW_V2)?;
    write(
        &root.join("etc/shadow"),
        "root:*:19000:0:99999:7:::\n",
        0,
        42,
        0o640,
    )?;
    write(
        &root.join("etc/hosts"),
        "127.0.0.1 localhost\n",
        0,
        0,
        0o644,
    )?;
    std::fs::hard_link(root.join("etc/hosts"), root.join("etc/hosts.hardlink"))
        .map_err(io(&root.join("etc/hosts.hardlink")))?;
    let notes = root.join("home/alice/notes");
    write(&notes, "shared with uid 1001\n", 1000, 1000, 0o640)?;
    use acl::*;
    let entries = |e: &[(u16, u16, u32)]| {
        encode(
            &e.iter()
                .map(|&(tag, perm, id)| AclEntry { tag, perm, id })
                .collect::<Vec<_>>(),
        )
    };
    set_xattr(
        &notes,
        ACCESS,
        &entries(&[
            (TAG_USER_OBJ, 6, UNDEFINED_ID),
            (TAG_USER, 4, 1001),
            (TAG_GROUP_OBJ, 4, UNDEFINED_ID),
            (TAG_MASK, 4, UNDEFINED_ID),
            (TAG_OTHER, 0, UNDEFINED_ID),
        ]),
    )?;
    set_xattr(
        &root.join("home"),
        DEFAULT,
        &entries(&[
            (TAG_USER_OBJ, 7, UNDEFINED_ID),
            (TAG_USER, 5, 1000),
            (TAG_GROUP_OBJ, 5, UNDEFINED_ID),
            (TAG_MASK, 5, UNDEFINED_ID),
            (TAG_OTHER, 5, UNDEFINED_ID),
        ]),
    )?;
    let link = root.join("etc/passwd-of-the-host");
    symlink("/etc/passwd", &link).map_err(io(&link))?;
    Ok(())
}

/// Prints a line (or lines) through the one printer.
fn say(text: &str) {
    report::out(&format!("{text}\n"));
}

fn heading(text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        say(&format!("\n\x1b[1m== {text}\x1b[0m"));
    } else {
        say(&format!("\n== {text}"));
    }
}

/// Runs a program, its stdout through our printer and its stderr on ours; fails unless it
/// succeeds.
fn run_program(program: &Path, args: &[&str], dir: Option<&Path>) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args).stderr(std::process::Stdio::inherit());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: escape_path(program),
        source,
    })?;
    report::out(&String::from_utf8_lossy(&out.stdout));
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Program {
            program: escape_path(program),
            status: out.status.to_string(),
            stderr: String::new(), // already shown
        })
    }
}

/// The names of the capability bits, as `getcap` prints them.
const CAP_NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

fn read_xattr(path: &Path, name: &CStr) -> Result<Option<Vec<u8>>> {
    let parent = std::fs::File::open(path.parent().expect("has a parent")).map_err(io(path))?;
    let file = std::ffi::CString::new(path.file_name().expect("named").as_encoded_bytes())
        .expect("no NUL");
    xattr::get(parent.as_fd(), Some(&file), name).map_err(|e| {
        Error::sys(
            format!("{}: get {}", escape_path(path), name.to_string_lossy()),
            e,
        )
    })
}

/// A file capability as container root sees it (`getcap` style), read by idshift itself so
/// that the demo needs no libcap tools: a v3 capability applies to the namespace whose root
/// is its root id.
fn caps_inside(path: &Path, map: &IdMap) -> Result<String> {
    let Some(bytes) = read_xattr(path, caps::NAME)? else {
        return Ok("no capability".into());
    };
    let c = caps::decode(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.0,
    })?;
    if map.to_ns(IdKind::Uid, c.rootid) != Some(0) {
        return Ok(format!(
            "a capability for root id {}, not this container",
            c.rootid
        ));
    }
    let permitted = u64::from(c.data[0].0) | u64::from(c.data[1].0) << 32;
    let names: Vec<&str> = (0..CAP_NAMES.len())
        .filter(|bit| permitted & (1 << bit) != 0)
        .map(|bit| CAP_NAMES[bit])
        .collect();
    let effective = if c.flags & 1 != 0 { "e" } else { "" };
    Ok(format!("{}={effective}p", names.join(",")))
}

/// An access ACL as container root sees it (`getfacl -n` style, without comments).
fn acl_inside(path: &Path, map: &IdMap) -> Result<String> {
    use acl::*;
    let Some(bytes) = read_xattr(path, ACCESS)? else {
        return Ok("no ACL".into());
    };
    let entries = decode(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.0,
    })?;
    let perm = |p: u16| {
        format!(
            "{}{}{}",
            if p & 4 != 0 { 'r' } else { '-' },
            if p & 2 != 0 { 'w' } else { '-' },
            if p & 1 != 0 { 'x' } else { '-' }
        )
    };
    let id = |kind: IdKind, host: u32| match map.to_ns(kind, host) {
        Some(inside) => inside.to_string(),
        None => "65534".into(), // unmapped: the overflow id
    };
    Ok(entries
        .iter()
        .map(|e| match e.tag {
            TAG_USER_OBJ => format!("user::{}", perm(e.perm)),
            TAG_USER => format!("user:{}:{}", id(IdKind::Uid, e.id), perm(e.perm)),
            TAG_GROUP_OBJ => format!("group::{}", perm(e.perm)),
            TAG_GROUP => format!("group:{}:{}", id(IdKind::Gid, e.id), perm(e.perm)),
            TAG_MASK => format!("mask::{}", perm(e.perm)),
            _ => format!("other::{}", perm(e.perm)),
        })
        .collect::<Vec<_>>()
        .join(" "))
}

/// Runs the demo; `keep` leaves the tree in place and says where.
pub fn run(keep: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Usage(
            "demo needs root: it builds a tree with files owned by root and other users, a \
             file capability and ACLs, then shifts their owners. Run `sudo idshift demo`; \
             without root, `idshift exec` and `idshift status DIR` work on your own containers"
                .into(),
        ));
    }
    let base = std::env::temp_dir().join(format!("idshift-demo-{}", std::process::id()));
    std::fs::create_dir(&base).map_err(io(&base))?;
    let mut cleanup = Cleanup(Some(base.clone()));
    let root = base.join("rootfs");
    build(&root)?;
    let map = IdMap::parse_list(MAP)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let printer = Printer::PLAIN;

    say(&format!(
        "A sample rootfs in the host view (root = uid 0) at {}:",
        escape_path(&root)
    ));
    say("setuid usr/bin/passwd, cap_net_raw on usr/bin/ping, ACLs on home/ and");
    say("home/alice/notes, a hardlink, and a symlink to the host's /etc/passwd.");

    heading(&format!("idshift status {}", escape_path(&root)));
    report::out(&status::scan(&root, None, threads, false, &printer)?.render());

    heading(&format!("idshift shift {} {MAP}", escape_path(&root)));
    let opts = shift::ShiftOptions {
        dir: root.clone(),
        from: View::Host,
        to: View::Map(map.clone()),
        dry_run: false,
        threads,
        cross_mounts: false,
        strict: false,
        verbose: true,
        force: false,
        accept_loss: Vec::new(),
    };
    report::out(&shift::run(&opts, &printer)?.render());

    heading(&format!(
        "idshift status {} --map {MAP}",
        escape_path(&root)
    ));
    report::out(&status::scan(&root, Some(&map), threads, false, &printer)?.render());

    heading("on the host: owned by the container's range; the symlink's target untouched");
    run_program(
        Path::new("ls"),
        &["-ln", "usr/bin", "home/alice"],
        Some(&root),
    )?;
    let passwd = std::fs::symlink_metadata("/etc/passwd").map_err(io(Path::new("/etc/passwd")))?;
    use std::os::unix::fs::MetadataExt;
    say(&format!(
        "/etc/passwd (behind etc/passwd-of-the-host): owner {}:{}",
        passwd.uid(),
        passwd.gid()
    ));

    let listing = format!("id; cd {}; ls -ln usr/bin home/alice", escape_path(&root));
    heading(&format!(
        "idshift exec -m {MAP} -- sh -c '…'   (as container root)"
    ));
    let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
    run_program(&exe, &["exec", "-m", MAP, "--", "sh", "-c", &listing], None)?;
    say(&format!(
        "usr/bin/ping {}",
        caps_inside(&root.join("usr/bin/ping"), &map)?
    ));
    say(&format!(
        "home/alice/notes {}",
        acl_inside(&root.join("home/alice/notes"), &map)?
    ));

    if keep {
        cleanup.0 = None;
        say(&format!(
            "\nKept {} (shifted into {MAP}).",
            escape_path(&root)
        ));
    } else {
        say(&format!("\nRemoved {}.", escape_path(&base)));
    }
    Ok(())
}
