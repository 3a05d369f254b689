//! Whether a tree is in use: a process has its root directory or its working directory inside
//! it (a running container, a shell sitting in it), or LXC says the container it belongs to is
//! running. One check for `shift`, `migrate` and `exec --rootfs`; `--force` overrides it.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::sys::fs as sysfs;

/// How far up from a working directory the check climbs looking for the tree.
const MAX_DEPTH: usize = 4096;

/// Why the tree at `dir` is in use, if it is. `container` names the LXC container
/// (`LXCPATH`, `NAME`) the tree belongs to, when known.
pub fn in_use(dir: &Path, container: Option<(&Path, &str)>) -> Option<String> {
    if let Some((lxcpath, name)) = container {
        if let Some(why) = lxc_running(lxcpath, name) {
            return Some(format!("container '{name}' is running ({why})"));
        }
    }
    let tree = std::fs::symlink_metadata(dir).ok()?;
    let tree = (tree.dev(), tree.ino());
    let me = std::process::id();
    for (pid, proc_dir) in processes() {
        if pid == me {
            continue;
        }
        // Readable for root, and for the caller's own processes.
        for (link, what) in [("root", "root directory"), ("cwd", "working directory")] {
            if inside(&proc_dir.join(link), tree) {
                let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
                return Some(format!(
                    "process {pid} ({}) has its {what} in it",
                    comm.trim()
                ));
            }
        }
    }
    None
}

/// Every process: its pid and its `/proc/PID` directory.
fn processes() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
}

/// Whether the directory `link` (a `/proc/PID/{root,cwd}` link, opened in that process's view)
/// is the tree or lies below it: climb `..` from it until the tree or the top is reached.
fn inside(link: &Path, tree: (u64, u64)) -> bool {
    let Ok(c) = std::ffi::CString::new(link.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let Ok(mut fd) = sysfs::open_dir_following(&c) else {
        return false;
    };
    for _ in 0..MAX_DEPTH {
        let Ok(st) = sysfs::statx(fd.as_fd(), None) else {
            return false;
        };
        if (st.dev, st.ino) == tree {
            return true;
        }
        let Ok(up) = sysfs::open_dir(Some(fd.as_fd()), c"..") else {
            return false;
        };
        match sysfs::statx(up.as_fd(), None) {
            Ok(u) if (u.dev, u.ino, u.mnt_id) == (st.dev, st.ino, st.mnt_id) => return false,
            Ok(_) => fd = up,
            Err(_) => return false,
        }
    }
    false
}

/// Why LXC considers the container running, if it does: `lxc-info` says so, or its
/// `[lxc monitor]` process exists.
pub fn lxc_running(lxcpath: &Path, name: &str) -> Option<String> {
    if let Ok(out) = std::process::Command::new("lxc-info")
        .args(["-s", "-H", "-n", name, "-P"])
        .arg(lxcpath)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    {
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !state.is_empty() && state != "STOPPED" {
            return Some(format!("lxc-info says {state}"));
        }
    }
    let monitor = format!(
        "[lxc monitor] {} {name}",
        crate::report::escape_path(lxcpath)
            .to_string()
            .trim_end_matches('/')
    );
    for (pid, proc_dir) in processes() {
        // The monitor's title replaces its argv[0] (the first NUL-separated field).
        if let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) {
            if cmdline.split(|&b| b == 0).next() == Some(monitor.as_bytes()) {
                return Some(format!("its monitor process {pid} exists"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_working_directory_below_the_tree_is_inside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("t");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        let id = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        assert!(inside(&tree.join("a/b"), id(&tree)));
        assert!(inside(&tree, id(&tree)));
        assert!(!inside(tmp.path(), id(&tree)));
        assert!(!inside(Path::new("/"), id(&tree)));
    }
}
