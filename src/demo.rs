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
use crate::idmap::IdMap;
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
            format!("{}: set {}", path.display(), name.to_string_lossy()),
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

fn heading(text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m== {text}\x1b[0m");
    } else {
        println!("\n== {text}");
    }
}

/// `ls -ln` of some of the tree, as seen from where idshift runs.
fn list(root: &Path) -> Result<()> {
    let status = Command::new("ls")
        .args(["-ln", "usr/bin", "home/alice"])
        .current_dir(root)
        .status()
        .map_err(|e| Error::Failed(format!("cannot run ls: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Failed(format!("ls failed: {status}")))
    }
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
    let threads = crate::threads(None);

    println!(
        "A sample rootfs in the host view (root = uid 0) at {}:",
        root.display()
    );
    println!("setuid usr/bin/passwd, cap_net_raw on usr/bin/ping, ACLs on home/ and");
    println!("home/alice/notes, a hardlink, and a symlink to the host's /etc/passwd.");

    heading(&format!("idshift status {}", root.display()));
    print!(
        "{}",
        status::scan(&root, None, threads, false, &crate::report::Printer)?.render()
    );

    heading(&format!("idshift shift {} {MAP}", root.display()));
    let opts = shift::ShiftOptions {
        dir: root.clone(),
        from: View::Host,
        to: View::Map(map.clone()),
        dry_run: false,
        threads,
        cross_mounts: false,
        strict: false,
        verbose: true,
        progress: shift::Progress::Never,
        force: false,
    };
    print!("{}", shift::run(&opts, &crate::report::Printer)?.render());

    heading(&format!("idshift status {} --map {MAP}", root.display()));
    print!(
        "{}",
        status::scan(&root, Some(&map), threads, false, &crate::report::Printer)?.render()
    );

    heading("on the host: owned by the container's range; the symlink's target untouched");
    list(&root)?;
    let passwd = std::fs::symlink_metadata("/etc/passwd").map_err(io(Path::new("/etc/passwd")))?;
    use std::os::unix::fs::MetadataExt;
    println!(
        "/etc/passwd (behind etc/passwd-of-the-host): owner {}:{}",
        passwd.uid(),
        passwd.gid()
    );

    let listing = format!(
        "id; cd {}; ls -ln usr/bin home/alice; \
         (command -v getcap >/dev/null && getcap usr/bin/ping) || true; \
         (command -v getfacl >/dev/null && getfacl -n home/alice/notes 2>/dev/null | grep user) || true",
        root.display()
    );
    heading(&format!(
        "idshift exec -m {MAP} -- sh -c '…'   (as container root)"
    ));
    let exe = std::env::current_exe()
        .map_err(|e| Error::Failed(format!("cannot find idshift itself: {e}")))?;
    let status = Command::new(exe)
        .args(["exec", "-m", MAP, "--", "sh", "-c", &listing])
        .status()
        .map_err(|e| Error::Failed(format!("cannot run idshift exec: {e}")))?;
    if !status.success() {
        return Err(Error::Failed(format!("idshift exec failed: {status}")));
    }

    if keep {
        cleanup.0 = None;
        println!("\nKept {} (shifted into {MAP}).", root.display());
    } else {
        println!("\nRemoved {}.", base.display());
    }
    Ok(())
}
