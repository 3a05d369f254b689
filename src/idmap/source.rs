//! Where a map comes from, as a command names it: `-m` specs, an LXC container or config file,
//! an OCI runtime config, or the caller's delegated ranges in `/etc/subuid` and `/etc/subgid`.

use std::path::PathBuf;

use super::lxc::LxcConfig;
use super::subid::{SubIdFiles, User};
use super::{IdMap, MapSpec};
use crate::error::{Error, Result};

/// One source of a map.
#[derive(Clone, Debug)]
pub enum Source {
    /// Map entries given one by one (`-m KIND:NSID:HOSTID:COUNT`).
    Specs(Vec<MapSpec>),
    /// The `lxc.idmap` lines of the container `name` under `lxcpath`.
    Container { lxcpath: PathBuf, name: String },
    /// The `lxc.idmap` lines of an LXC config file.
    LxcConfig(PathBuf),
    /// `linux.uidMappings` and `linux.gidMappings` of an OCI runtime `config.json`.
    OciConfig(PathBuf),
    /// Every range `/etc/subuid` and `/etc/subgid` delegate to this user, from 0 upward.
    Delegated(User),
    /// The `lxc.idmap` lines of LXC's default config for this user's new containers
    /// ([`super::lxc::default_config_path`]).
    DefaultConfig(User),
}

impl Source {
    /// Reads the map.
    pub fn map(&self) -> Result<IdMap> {
        match self {
            Source::Specs(specs) => Ok(IdMap::from_specs(specs)?),
            Source::Container { lxcpath, name } => LxcConfig::for_container(lxcpath, name)?.map(),
            Source::LxcConfig(path) => LxcConfig::read(path)?.map(),
            Source::OciConfig(path) => super::oci::read(path),
            Source::Delegated(user) => SubIdFiles::default().default_map(user),
            Source::DefaultConfig(user) => match super::lxc::default_config(user.uid) {
                Some((_, map)) => map,
                None => Err(Error::Usage(format!(
                    "--default: {} does not exist (LXC's config for new containers); give -m, \
                     --container or --lxc-config",
                    super::lxc::default_config_path(user.uid).map_or_else(
                        || "~/.config/lxc/default.conf".into(),
                        |p| crate::report::escape_path(&p)
                    )
                ))),
            },
        }
    }

    /// The config file the map is read from, if any.
    pub fn config_file(&self) -> Option<PathBuf> {
        match self {
            Source::Container { lxcpath, name } => Some(lxcpath.join(name).join("config")),
            Source::LxcConfig(path) | Source::OciConfig(path) => Some(path.clone()),
            Source::DefaultConfig(user) => super::lxc::default_config_path(user.uid),
            Source::Specs(_) | Source::Delegated(_) => None,
        }
    }
}
