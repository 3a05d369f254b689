//! Command-line definitions (clap derive). Only argument structs live here; `cmd` turns
//! them into domain values once.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::idmap::MapSpec;
use crate::userns::EnvSetting;

/// Enter and shift the uid/gid mappings of unprivileged Linux containers.
#[derive(Debug, Parser)]
#[command(name = "idshift", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Each subcommand's arguments are built only when it is the one invoked (`defer`; `--help`,
// `man` and `completions` build them all): building every one costs a short command like
// `exec` 16 page faults, ~7% of its start-up.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
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
                      idshift exec --container c1 --rootfs -- dpkg -l\n  \
                      idshift exec -m b:0:1000:1 -m b:1:190000:1 -- chown 1:1 FILE"
    )]
    Exec(ExecArgs),

    /// Remap the ownership of a whole tree from one id mapping to another, in one pass.
    ///
    /// `idshift shift DIR MAP...` maps a tree in the host view into MAP (as fuidshift does); -r
    /// maps it back. `--from MAP... --to MAP...` (or --from-container/--to-container) moves it
    /// from one container mapping to another in one pass. Owners, groups, POSIX ACL entries and
    /// the root id of file capabilities are remapped; setuid/setgid bits, capabilities, other
    /// xattrs and times are kept. Ids the FROM map does not cover are left and listed.
    ///
    /// A killed shift is finished by running the same command again; a different shift on a
    /// half-shifted tree is refused. Exit status: 0 done; 1 done except the listed inodes;
    /// 2 usage error; 3 refused (another shift pending, another map recorded, outliers under
    /// --strict).
    #[command(
        after_help = "Examples:\n  idshift shift rootfs b:0:100000:65536          # host view -> container\n  \
                      idshift shift -r rootfs b:0:100000:65536       # and back\n  \
                      idshift shift rootfs --from b:0:100000:65536 --to b:0:200000:65536\n  \
                      idshift shift rootfs --from-container c1 --to b:0:200000:65536 -n -v"
    )]
    Shift(ShiftArgs),

    /// Move a stopped LXC container to another id range: shift its rootfs from the map in its
    /// config to the new one, then rewrite the config's lxc.idmap lines (atomically, every other
    /// line kept). A privileged container (no lxc.idmap, rootfs in the host view) is made
    /// unprivileged the same way, and `--to host` makes one privileged again (root only).
    ///
    /// Without root, both ranges must be delegated to you in /etc/subuid and /etc/subgid: the
    /// shift then runs in a user namespace that maps them (through newuidmap/newgidmap). A killed
    /// migrate is finished by running it again. Exit status: 0 done; 1 failed (the config still
    /// names the old map); 2 usage error (unknown container, missing rootfs);
    /// 3 refused (running container, range not delegated, another shift pending).
    #[command(after_help = "Examples:\n  idshift migrate c1 --to 300000\n  \
                      sudo idshift migrate web --to auto  # a privileged container made unprivileged\n  \
                      sudo idshift migrate web --to host  # and back\n  \
                      idshift migrate c1 --to auto --dry-run\n  \
                      idshift migrate c1 --to-map u:0:300000:65536 g:0:300000:65536")]
    Migrate(MigrateArgs),

    /// Scan a tree (read-only): inode counts, ids by 65536-block, the map it appears to use,
    /// setuid/setgid files, file capabilities, ACLs, and any unfinished shift.
    Status(StatusArgs),

    /// Show SRC at DST through a map, changing nothing on disk: an idmapped bind mount (root
    /// only; Linux 5.12 or later, on filesystems that support it).
    ///
    /// Each entry maps an on-disk id to the id shown at DST, i.e. the container's own map:
    /// `-m b:0:100000:65536` shows a host-view tree (owned by 0) as owned by 100000. Remove the
    /// mount with `idshift umount DST`.
    ///
    /// The mount is nodev and nosuid (setuid/setgid bits and file capabilities give nothing at
    /// DST) unless --suid is given. A map that shows some on-disk id as uid or gid 0 (such as
    /// `-m b:1000000:0:65536`) shows the setuid files container root planted as setuid root:
    /// idshift warns.
    ///
    /// Exit status: 0 mounted; 1 failed (not root, no idmapped mounts on this filesystem);
    /// 2 usage error.
    #[command(
        after_help = "Examples:\n  idshift mount -m b:0:100000:65536 /srv/images/base ~/.local/share/lxc/c1/rootfs\n  \
                      idshift status ~/.local/share/lxc/c1/rootfs\n  \
                      idshift umount ~/.local/share/lxc/c1/rootfs"
    )]
    Mount(MountArgs),

    /// Remove an idmapped mount made by `idshift mount` (and the mounts below it); other mounts
    /// are refused.
    ///
    /// idshift records each mount it makes in /run/idshift/mounts; an idmapped mount without a
    /// record (LXC's, Incus's, systemd-nspawn's) is refused unless --force. Exit status: 0
    /// removed; 1 failed; 2 not a mount point, or not an idmapped mount (use umount(8)); 3
    /// refused: an idmapped mount idshift did not make.
    Umount {
        /// Where the idmapped mount is.
        dst: PathBuf,

        /// Also remove an idmapped mount that idshift did not make.
        #[arg(long)]
        force: bool,
    },

    /// List the LXC containers of the lxcpath(s): state, the map each config names, the view
    /// recorded on each rootfs, an unfinished shift, and whether config and rootfs agree.
    ///
    /// Read-only. A container that cannot be read is listed with the reason.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  idshift list\n  \
                      sudo idshift list -P /var/lib/lxc -P /srv/lxc --json\n  \
                      idshift list --names  # for scripts and completions"
    )]
    List(ListArgs),

    /// List the subordinate ranges delegated to USER (default: you), the ranges USER's LXC
    /// containers use, overlaps between containers, and the first free 65536 block.
    Ranges(RangesArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff) to stdout (`idshift man > idshift.1`), or write idshift.1 and
    /// a page per subcommand (idshift-exec.1, ...) into a directory.
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },

    /// Show the main job on a built-in example (needs root): build a small rootfs-like tree in
    /// a temporary directory, show its status, shift it into b:0:100000:65536, show its status
    /// again and list it through `exec` as container root, then remove it.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The container's name.
    pub name: String,

    /// Where container root goes: a host id (every entry of the map moves by the same offset;
    /// a privileged container gets u/g 0 HOSTBASE 65536), `auto` for the first free 65536 block
    /// delegated to you, or `host` to make the container privileged (root only: the rootfs
    /// goes to the host view and the lxc.idmap lines are removed).
    #[arg(
        long,
        value_name = "HOSTBASE|auto|host",
        required_unless_present = "to_map",
        conflicts_with = "to_map"
    )]
    pub to: Option<String>,

    /// The new map, as KIND:NSID:HOSTID:COUNT entries.
    #[arg(long, num_args = 1.., value_name = "MAP", value_parser = MapSpec::from_str)]
    pub to_map: Vec<MapSpec>,

    /// Also shift the directories the container bind-mounts (lxc.mount.entry ... bind) whose
    /// owner lies in the old map, after the rootfs and before the config is rewritten; one
    /// that another container also mounts is refused. Without it they are listed and left.
    #[arg(long)]
    pub with_mounts: bool,

    /// Keep the rootfs in the host view and have LXC idmap it with the container's map
    /// (`lxc.rootfs.options = idmap=container`; root, a filesystem with idmapped mounts). The
    /// first time the rootfs is shifted to the host view; after that a migrate only rewrites the
    /// lxc.idmap lines, touching no inode.
    #[arg(long, conflicts_with = "no_idmapped")]
    pub idmapped: bool,

    /// Return an idmapped container to a shifted rootfs (and drop idmap=container).
    #[arg(long)]
    pub no_idmapped: bool,

    /// Where the containers are [default: ~/.local/share/lxc, /var/lib/lxc for root].
    #[arg(short = 'P', long = "lxcpath", value_name = "DIR")]
    pub lxcpath: Option<PathBuf>,

    #[command(flatten)]
    pub common: ShiftCommon,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// A map entry KIND:NSID:HOSTID:COUNT: on-disk id NSID.. is shown as HOSTID..; repeat for
    /// more entries.
    #[arg(short = 'm', long = "map", value_name = "SPEC", required_unless_present = "container",
          value_parser = MapSpec::from_str)]
    pub map: Vec<MapSpec>,

    /// Show this LXC container's rootfs at DST as its root sees it (on-disk host ids shown as
    /// the container's ids, through the inverse of its map): give DST only. Its rootfs in use
    /// (the container running) is refused unless --force.
    #[arg(long, value_name = "NAME", conflicts_with = "map")]
    pub container: Option<String>,

    /// The LXC path of --container [default: ~/.local/share/lxc, /var/lib/lxc for root].
    #[arg(
        short = 'P',
        long = "lxcpath",
        value_name = "DIR",
        requires = "container"
    )]
    pub lxcpath: Option<PathBuf>,

    /// The directory to show (not with --container).
    #[arg(value_name = "SRC")]
    pub src: PathBuf,

    /// Where to show it (an existing directory).
    #[arg(value_name = "DST")]
    pub dst: Option<PathBuf>,

    /// Also show the filesystems mounted below SRC, each through the map.
    #[arg(short = 'R', long)]
    pub recursive: bool,

    /// Honour setuid/setgid bits and file capabilities at DST (no nosuid; nodev stays). With a
    /// map that shows an on-disk id as 0, anyone who can reach DST can run container root's
    /// setuid files as host root.
    #[arg(long)]
    pub suid: bool,

    /// Mount although SRC or DST belongs to another user and the map shows ids as host 0 or
    /// as ids not delegated to that user; says what it overrides.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Where the containers are; repeat for more [default: ~/.local/share/lxc, /var/lib/lxc for
    /// root].
    #[arg(short = 'P', long = "lxcpath", value_name = "DIR")]
    pub lxcpath: Vec<PathBuf>,

    /// Print the list as JSON.
    #[arg(long, conflicts_with = "names")]
    pub json: bool,

    /// Print the names only, one per line.
    #[arg(long)]
    pub names: bool,
}

#[derive(Debug, Args)]
pub struct RangesArgs {
    /// A user name or uid [default: the caller].
    pub user: Option<String>,

    /// Where USER's containers are [default: ~USER/.local/share/lxc, /var/lib/lxc for root].
    #[arg(short = 'P', long = "lxcpath", value_name = "DIR")]
    pub lxcpath: Option<PathBuf>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the shifted sample tree and print where it is.
    #[arg(long)]
    pub keep: bool,
}

/// A `--from`/`--to` value of `shift`: a map entry, or `host`, the host view by name.
#[derive(Clone, Debug)]
pub enum ViewArg {
    Host,
    Spec(MapSpec),
}

impl FromStr for ViewArg {
    type Err = crate::idmap::MapError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "host" => Ok(ViewArg::Host),
            _ => MapSpec::from_str(text).map(ViewArg::Spec),
        }
    }
}

/// How much progress to show.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ProgressArg {
    /// A progress bar when stderr is a terminal.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct ShiftArgs {
    /// The tree to shift (a real directory: a symlink in its last component is refused).
    #[arg(required_unless_present = "container")]
    pub dir: Option<PathBuf>,

    /// Shift this LXC container's rootfs (from lxc.rootfs.path) from the view its config names
    /// (its map, or the host view for a privileged container) to --to or --to-container. The
    /// config is not changed: `idshift migrate` does both.
    #[arg(long, value_name = "NAME",
          conflicts_with_all = ["dir", "map", "from", "from_container"])]
    pub container: Option<String>,

    /// Map the tree from the host view into these KIND:NSID:HOSTID:COUNT entries.
    #[arg(value_name = "MAP", value_parser = MapSpec::from_str)]
    pub map: Vec<MapSpec>,

    /// Map from MAP back to the host view.
    #[arg(short = 'r', long, requires = "map")]
    pub reverse: bool,

    /// The map the tree is in now (entries KIND:NSID:HOSTID:COUNT), or `host` for the host view.
    #[arg(long, num_args = 1.., value_name = "MAP|host", value_parser = ViewArg::from_str,
          conflicts_with_all = ["map", "from_container"])]
    pub from: Vec<ViewArg>,

    /// The map to move the tree to, or `host` for the host view.
    #[arg(long, num_args = 1.., value_name = "MAP|host", value_parser = ViewArg::from_str,
          conflicts_with_all = ["map", "to_container"])]
    pub to: Vec<ViewArg>,

    /// Take the FROM map from this LXC container's config.
    #[arg(long, value_name = "NAME", conflicts_with = "map")]
    pub from_container: Option<String>,

    /// Take the TO map from this LXC container's config.
    #[arg(long, value_name = "NAME", conflicts_with = "map")]
    pub to_container: Option<String>,

    /// The LXC path of --container/--from-container/--to-container [default:
    /// ~/.local/share/lxc, /var/lib/lxc for root].
    #[arg(short = 'P', long = "lxcpath", value_name = "DIR")]
    pub lxcpath: Option<PathBuf>,

    #[command(flatten)]
    pub common: ShiftCommon,
}

// Options shared by `shift` and the commands built on it. (A `//` comment: a doc comment on a
// flattened struct becomes the `about` of every subcommand that flattens it, once deferred.)
#[derive(Debug, Args)]
pub struct ShiftCommon {
    /// Read only: write nothing anywhere, report what would change.
    #[arg(short = 'n', long)]
    pub dry_run: bool,

    /// Worker threads [default: 8 per core, 4 to 64: a walk waits on the disk more than on the
    /// CPU when the tree is not cached].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Also shift filesystems mounted inside the tree (left alone by default).
    #[arg(long)]
    pub cross_mounts: bool,

    /// Refuse, before changing anything, if any id lies outside the FROM map.
    #[arg(long)]
    pub strict: bool,

    /// A progress bar with inodes/s (and an ETA when the size is known).
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,

    /// Print each change.
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Go ahead although the tree is in use (a process has its root or working directory in
    /// it, or LXC says its container is running), or, as root, although the container belongs
    /// to another user and its maps or paths go beyond what is delegated to them; says what it
    /// overrides.
    #[arg(long)]
    pub force: bool,
    /// Accept the loss recorded for this file (repeatable): a setuid/setgid bit or capability
    /// that the chown of an interrupted run took, which could not be written back because the
    /// file was changed since. The tree's loss list names such files until they hold what they
    /// lost again or their loss is accepted; until then every shift exits 1.
    #[arg(long, value_name = "PATH")]
    pub accept_loss: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The tree to scan.
    #[arg(required_unless_present = "container")]
    pub dir: Option<PathBuf>,

    /// Scan this LXC container's rootfs (from lxc.rootfs.path), and say whether its config's
    /// map agrees with the rootfs. Read-only: a running container may be scanned.
    #[arg(long, value_name = "NAME", conflicts_with = "dir")]
    pub container: Option<String>,

    /// The LXC path of --container [default: ~/.local/share/lxc, /var/lib/lxc for root].
    #[arg(
        short = 'P',
        long = "lxcpath",
        value_name = "DIR",
        requires = "container"
    )]
    pub lxcpath: Option<PathBuf>,

    /// Count the inodes whose ids these KIND:NSID:HOSTID:COUNT entries do not cover (host side).
    #[arg(short = 'm', long = "map", value_name = "SPEC", value_parser = MapSpec::from_str)]
    pub map: Vec<MapSpec>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Worker threads [default: 8 per core, 4 to 64: a walk waits on the disk more than on the
    /// CPU when the tree is not cached].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Also scan filesystems mounted inside the tree.
    #[arg(long)]
    pub cross_mounts: bool,
}

// Where a map comes from: `-m` specs, an LXC container, an LXC config file or an OCI config.
// (A `//` comment, as for `ShiftCommon`.)
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

    /// Use the lxc.idmap lines of LXC's default config for new containers
    /// (~/.config/lxc/default.conf, /etc/lxc/default.conf for root).
    #[arg(long, conflicts_with_all = ["map", "container", "lxc_config", "oci_config"])]
    pub default: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub source: MapSource,

    /// Also map the caller's own uid and gid (at the same id inside if free, else just above
    /// the map), so that files only the caller can reach, like a 0700 home, stay reachable.
    #[arg(short = 's', long = "map-self")]
    pub map_self: bool,

    /// Also enter this directory as a container: a private mount and PID namespace (mounts made
    /// slave), a fresh /proc, a minimal /dev, pivot_root with the host's tree detached (none of
    /// it is reachable inside), a new session, and on a terminal a new terminal of its own
    /// (idshift relays it; the caller's is never handed over). The environment is clean: PATH
    /// and HOME of a container's root, the caller's TERM, LANG and LC_*, and what --env adds.
    /// For scripted fix-ups of a stopped container, as its own root. With --container, DIR may
    /// be left out: the container's rootfs (lxc.rootfs.path) is used; put `--` before the
    /// command then.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub rootfs: Option<Option<PathBuf>>,

    /// With --rootfs: go ahead although the rootfs is in use (a process has its root or working
    /// directory in it, or LXC says the --container is running), or, as root, although the
    /// --container belongs to another user and its map or rootfs go beyond what is delegated
    /// to them; says what it overrides.
    #[arg(long, requires = "rootfs")]
    pub force: bool,

    /// With --rootfs: also set NAME=VALUE in the command's environment, or pass the caller's
    /// NAME (if set); repeat for more.
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]", requires = "rootfs",
          value_parser = EnvSetting::from_str)]
    pub env: Vec<EnvSetting>,

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

#[cfg(test)]
mod tests {
    /// clap's own consistency checks of every subcommand's arguments (conflicts, requires,
    /// names, positions). With `defer`, a run only checks the subcommand it builds.
    #[test]
    fn every_subcommand_passes_claps_checks() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
