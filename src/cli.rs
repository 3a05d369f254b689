//! Command-line definitions (clap derive). Only argument structs live here; `lib::run` turns
//! them into domain values once.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::idmap::MapSpec;

/// Enter and shift the uid/gid mappings of unprivileged Linux containers.
#[derive(Debug, Parser)]
#[command(name = "idshift", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command as root in a new user namespace with a container's id mapping.
    ///
    /// Without a map option the caller's /etc/subuid and /etc/subgid ranges are all mapped,
    /// from namespace id 0 upward in file order. Root writes the maps itself and may use any
    /// map; other users get them written by newuidmap/newgidmap, which check /etc/subuid and
    /// /etc/subgid.
    ///
    /// Exit status: the command's own; 128+N if it died of signal N; 126 if it could not be
    /// executed; 127 if it was not found; 125 if idshift itself failed (the command never ran).
    #[command(
        after_help = "Examples:\n  idshift exec -m b:0:100000:65536 -- sh -c 'id; cat /proc/self/uid_map'\n  \
                      idshift exec --container c1 -- ls -ln ~/.local/share/lxc/c1/rootfs\n  \
                      idshift exec -m b:0:1000:1 -m b:1:190000:1 -- chown 1:1 FILE"
    )]
    Exec(ExecArgs),
}

/// Where a map comes from: `-m` specs, an LXC container, an LXC config file or an OCI config.
#[derive(Debug, Args)]
pub struct MapSource {
    /// A map entry KIND:NSID:HOSTID:COUNT (KIND u, g or b for both), as lxc-usernsexec -m
    /// takes it; repeat for more entries.
    #[arg(short = 'm', long = "map", value_name = "SPEC", value_parser = MapSpec::from_str)]
    pub map: Vec<MapSpec>,

    /// Use the lxc.idmap lines of this LXC container's config.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["map", "lxc_config", "oci_config"])]
    pub container: Option<String>,

    /// The LXC path holding the containers [default: ~/.local/share/lxc, /var/lib/lxc for root].
    #[arg(
        short = 'P',
        long = "lxcpath",
        value_name = "DIR",
        requires = "container"
    )]
    pub lxcpath: Option<PathBuf>,

    /// Use the lxc.idmap lines of this LXC config file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["map", "oci_config"])]
    pub lxc_config: Option<PathBuf>,

    /// Use linux.uidMappings/gidMappings of this OCI runtime config.json.
    #[arg(long, value_name = "FILE", conflicts_with = "map")]
    pub oci_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub source: MapSource,

    /// Also map the caller's own uid and gid (at the same id inside if free, else just above
    /// the map), so that files only the caller can reach, like a 0700 home, stay reachable.
    #[arg(short = 's', long = "map-self")]
    pub map_self: bool,

    /// The uid to run the command as, inside the namespace [default: 0].
    #[arg(long, value_name = "UID")]
    pub uid: Option<u32>,

    /// The gid to run the command as, inside the namespace [default: 0].
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,

    /// The command and its arguments [default: $SHELL, else /bin/sh].
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}
