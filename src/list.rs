//! `idshift list`: every container of the lxcpaths, with its state, the map its config names,
//! the view recorded on its rootfs, an unfinished shift, and whether config and rootfs agree.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::container::Container;
use crate::error::Result;
use crate::ranges::DefaultConfig;
use crate::shift::state::{self, Found};
use crate::shift::View;
use crate::tree::Tree;

/// What `list` reports (`"schema": 1` in JSON, described in the README).
#[derive(Clone, Debug, Serialize)]
pub struct List {
    pub schema: u32,
    pub containers: Vec<Entry>,
    /// LXC's default config for the caller's new containers, when it exists.
    pub default_config: Option<DefaultConfig>,
}

/// One container.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub name: String,
    #[serde(serialize_with = "crate::report::ser_path")]
    pub lxcpath: PathBuf,
    /// `RUNNING`, `STOPPED`, or what `lxc-info` says (`FROZEN`, …).
    pub state: String,
    /// The view its config names: its map, or the host view (privileged); `null` when the
    /// config cannot be read (`error`).
    #[serde(serialize_with = "crate::report::ser_opt_view")]
    pub configured: Option<View>,
    #[serde(serialize_with = "crate::report::ser_opt_path")]
    pub rootfs: Option<PathBuf>,
    /// The view the last shift recorded on the rootfs (`user.idshift.map`).
    #[serde(serialize_with = "crate::report::ser_opt_view")]
    pub recorded: Option<View>,
    /// An unfinished shift of the rootfs: `{from, to}`.
    pub pending: Option<PendingShift>,
    /// Whether the rootfs is in the configured view (the recorded view decides, else the owner
    /// of its root); `null` when it cannot tell (a shift pending, the rootfs unreadable).
    pub agrees: Option<bool>,
    /// Whether LXC idmaps the rootfs (`idmap=container`): it is kept in the host view.
    pub idmapped: bool,
    /// Why something could not be read.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PendingShift {
    #[serde(serialize_with = "crate::report::ser_view")]
    pub from: View,
    #[serde(serialize_with = "crate::report::ser_view")]
    pub to: View,
}

/// Lists the containers of `lxcpaths`; a container that cannot be read is listed with why.
pub fn gather(lxcpaths: &[PathBuf]) -> Result<List> {
    let mut containers = Vec::new();
    for lxcpath in lxcpaths {
        for name in crate::container::names(lxcpath)? {
            containers.push(entry(lxcpath, &name));
        }
    }
    let uid = nix::unistd::geteuid().as_raw();
    Ok(List {
        schema: 1,
        containers,
        default_config: crate::ranges::default_config_of(uid),
    })
}

fn entry(lxcpath: &Path, name: &str) -> Entry {
    let state = match crate::inuse::lxc_running(lxcpath, name) {
        Some(why) => why
            .strip_prefix("lxc-info says ")
            .unwrap_or("RUNNING")
            .to_string(),
        None => "STOPPED".to_string(),
    };
    let mut e = Entry {
        name: name.to_string(),
        lxcpath: lxcpath.to_path_buf(),
        state,
        configured: None,
        rootfs: None,
        recorded: None,
        pending: None,
        agrees: None,
        idmapped: false,
        error: None,
    };
    let found = Container::open(lxcpath, name)
        .and_then(|c| Ok((c.view()?, c.rootfs_view()?, c)))
        .map(|(configured, on_disk, c)| (c, configured, on_disk));
    let (c, configured, on_disk) = match found {
        Ok(found) => found,
        Err(err) => {
            e.error = Some(err.to_string());
            return e;
        }
    };
    e.rootfs = Some(c.rootfs.clone());
    e.configured = Some(configured);
    e.idmapped = c.config.rootfs_idmapped();
    // What the rootfs should hold: the host view when LXC idmaps it.
    let configured = on_disk;
    let tree = match Tree::open(&c.rootfs) {
        Ok(tree) => tree,
        Err(err) => {
            e.error = Some(err.to_string());
            return e;
        }
    };
    e.recorded = state::recorded(tree.root.as_fd());
    if let Ok(Found::Pending(j)) = state::find(&tree) {
        if !j.done {
            e.pending = Some(PendingShift {
                from: j.header.from.clone(),
                to: j.header.to.clone(),
            });
        }
    }
    e.agrees = crate::container::agrees(
        &configured,
        e.recorded.as_ref(),
        e.pending.is_some(),
        (tree.stat.uid, tree.stat.gid),
    );
    e
}

impl List {
    pub fn render(&self) -> String {
        let mut rows = vec![[
            "NAME".to_string(),
            "STATE".into(),
            "CONFIG MAP".into(),
            "ROOTFS".into(),
            "PENDING".into(),
            "AGREE".into(),
        ]];
        for e in &self.containers {
            let view = |v: &Option<View>| v.as_ref().map_or("-".to_string(), View::to_string);
            let configured = match &e.configured {
                Some(View::Host) => "privileged (host)".to_string(),
                v if e.idmapped => format!("{} (idmapped)", view(v)),
                v => view(v),
            };
            rows.push([
                e.name.clone(),
                e.state.clone(),
                configured,
                e.recorded.as_ref().map_or_else(
                    || {
                        if e.error.is_some() {
                            "?".into()
                        } else {
                            "not recorded".into()
                        }
                    },
                    |v| format!("recorded {v}"),
                ),
                e.pending
                    .as_ref()
                    .map_or("-".to_string(), |p| format!("{} -> {}", p.from, p.to)),
                match e.agrees {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "?".into(),
                },
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            out += cells.join("  ").trim_end();
            out += "\n";
        }
        for e in self.containers.iter().filter(|e| e.error.is_some()) {
            out += &format!("{}: {}\n", e.name, e.error.as_deref().unwrap_or(""));
        }
        if let Some(d) = &self.default_config {
            out += &d.line();
        }
        out
    }
}
