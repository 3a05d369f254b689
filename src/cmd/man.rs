//! `idshift man [--out-dir DIR]`: the man page on stdout, or one page per command written into
//! DIR (idshift.1, idshift-exec.1, …).
//!
//! clap_mangen renders what clap knows (name, synopsis, description, options, subcommands);
//! the sections a man page is read for and clap has no place for — EXAMPLES, EXIT STATUS, FILES
//! and SEE ALSO — come from [`Extra`]. A command's examples are the `Examples:` lines of its
//! `after_help`, so `--help` and the page show the same ones.

use std::path::Path;

use clap::CommandFactory;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

use crate::cli::Cli;
use crate::error::{Error, Result};

pub fn run(out_dir: Option<&Path>) -> Result<()> {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    match out_dir {
        Some(dir) => {
            for page in pages(&top)? {
                let path = dir.join(format!("{}.1", page.name));
                std::fs::write(&path, &page.text).map_err(|e| Error::io(&path, e))?;
            }
            Ok(())
        }
        None => {
            let page = render(&top, "idshift", &[])?;
            crate::report::out(&page);
            Ok(())
        }
    }
}

/// One rendered page: `idshift` or `idshift-SUBCOMMAND`.
struct Page {
    name: String,
    text: String,
}

/// The top page and one per visible subcommand.
fn pages(top: &clap::Command) -> Result<Vec<Page>> {
    let subs: Vec<&clap::Command> = top.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    let siblings: Vec<String> = subs
        .iter()
        .map(|c| format!("idshift-{}", c.get_name()))
        .collect();
    let mut pages = vec![Page {
        name: "idshift".into(),
        text: render(top, "idshift", &siblings)?,
    }];
    for sub in subs {
        // `build` gave each subcommand its display name, `idshift-NAME`.
        pages.push(Page {
            name: format!("idshift-{}", sub.get_name()),
            text: render(sub, sub.get_name(), &["idshift".to_string()])?,
        });
    }
    Ok(pages)
}

/// The page of `cmd` (`key`: `idshift` or the subcommand's name), with links to `related`.
fn render(cmd: &clap::Command, key: &str, related: &[String]) -> Result<String> {
    let man = Man::new(cmd.clone())
        .title(
            cmd.get_display_name()
                .unwrap_or(cmd.get_name())
                .to_uppercase(),
        )
        .manual("idshift manual")
        .source(format!("idshift {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    let io = |e| Error::io("the man page", e);
    man.render_title(&mut out).map_err(io)?;
    man.render_name_section(&mut out).map_err(io)?;
    man.render_synopsis_section(&mut out).map_err(io)?;
    man.render_description_section(&mut out).map_err(io)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out).map_err(io)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out).map_err(io)?;
    }
    let mut roff = Roff::new();
    let examples = examples(cmd, key);
    if !examples.is_empty() {
        roff.control("SH", ["EXAMPLES"]);
        for (command, comment) in examples {
            roff.control("PP", []);
            if let Some(comment) = comment {
                roff.text([roman(comment)]);
            }
            roff.control("RS", ["4"])
                .control("EX", [])
                .text([roman(command)])
                .control("EE", [])
                .control("RE", []);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in exit_statuses(key) {
        roff.control("TP", [])
            .text([roman(*code)])
            .text([roman(*meaning)]);
    }
    let files: Vec<_> = FILES
        .iter()
        .filter(|(_, _, used_by)| key == "idshift" || used_by.contains(&key))
        .collect();
    if !files.is_empty() {
        roff.control("SH", ["FILES"]);
        for (file, meaning, _) in files {
            roff.control("TP", [])
                .text([roman(*file)])
                .text([roman(*meaning)]);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut see: Vec<String> = related.iter().map(|r| format!("{r}(1)")).collect();
    see.extend(SEE_ALSO.iter().map(|s| s.to_string()));
    roff.text([roman(see.join(", "))]);
    roff.to_writer(&mut out).map_err(io)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The examples of a command: the `Examples:` lines of its `after_help` (`  COMMAND  # WHY`),
/// else those of [`EXAMPLES`].
fn examples(cmd: &clap::Command, key: &str) -> Vec<(String, Option<String>)> {
    let from_help: Vec<_> = cmd
        .get_after_help()
        .map(|help| help.to_string())
        .into_iter()
        .flat_map(|help| {
            help.lines()
                .skip_while(|l| !l.starts_with("Examples:"))
                .skip(1)
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| match l.split_once("  #") {
                    Some((command, why)) => {
                        (command.trim().to_string(), Some(why.trim().to_string()))
                    }
                    None => (l.to_string(), None),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if !from_help.is_empty() {
        return from_help;
    }
    EXAMPLES
        .iter()
        .filter(|(k, _, _)| *k == key)
        .map(|(_, command, why)| (command.to_string(), Some(why.to_string())))
        .collect()
}

/// Examples of the commands whose `--help` has none: (command, example, what it does).
const EXAMPLES: &[(&str, &str, &str)] = &[
    (
        "idshift",
        "idshift exec --container c1 --rootfs -- dpkg -l",
        "List the packages of a stopped container as its root sees them.",
    ),
    (
        "idshift",
        "sudo idshift migrate c1 --to auto",
        "Move root's container c1 to the first free block of ids.",
    ),
    (
        "idshift",
        "idshift status ~/.local/share/lxc/c1/rootfs",
        "Which map a rootfs appears to use, its setuid files, capabilities and ACLs.",
    ),
    (
        "status",
        "idshift status ~/.local/share/lxc/c1/rootfs",
        "Counts, ids by 65536-block, the map the tree appears to use, setuid files.",
    ),
    (
        "status",
        "idshift status --json rootfs | jq .map",
        "The same as JSON (schema in the README).",
    ),
    (
        "umount",
        "sudo idshift umount /mnt/view",
        "Remove a mount made by idshift mount (never another one).",
    ),
    (
        "ranges",
        "idshift ranges",
        "Your delegated ranges, the containers using them, overlaps, and the first free block.",
    ),
    (
        "ranges",
        "sudo idshift ranges alice --json",
        "Another user's ranges as JSON.",
    ),
    (
        "completions",
        "idshift completions bash > /usr/share/bash-completion/completions/idshift",
        "Install the bash completion system-wide.",
    ),
    (
        "man",
        "idshift man --out-dir /usr/local/share/man/man1",
        "Install every page.",
    ),
    (
        "demo",
        "sudo idshift demo",
        "Build a small tree in a temporary directory, shift it, show it, remove it.",
    ),
];

/// Exit statuses of a command.
fn exit_statuses(key: &str) -> &'static [(&'static str, &'static str)] {
    match key {
        "idshift" => &[
            ("0", "Success."),
            ("1", "Done except the failures listed, or a failure of the system."),
            ("2", "A usage error: bad arguments, a malformed map, an unknown container."),
            ("3", "Refused: in use, another shift pending, another map recorded."),
            ("125, 126, 127", "exec: idshift failed; the command could not be run; it was not found."),
        ],
        "exec" => &[
            ("N", "The command's own exit status."),
            ("128+N", "The command died of signal N."),
            ("125", "idshift itself failed; the command never ran."),
            ("126", "The command was found but could not be executed."),
            ("127", "The command was not found."),
        ],
        "shift" => &[
            ("0", "Done."),
            ("1", "Done except the inodes listed (they could not be changed)."),
            ("2", "A usage error: bad arguments, a malformed map."),
            ("3", "Refused: in use, another shift pending, another map recorded, outliers under --strict."),
            ("128+N", "Interrupted by signal N after saying what is pending; run the same command again to finish."),
        ],
        "migrate" => &[
            ("0", "Done."),
            ("1", "Failed; the config still names the old map."),
            ("2", "A usage error: unknown container, missing rootfs, malformed map."),
            ("3", "Refused: running container, range not delegated, another shift pending."),
            ("128+N", "Interrupted by signal N after saying what is pending; run the same command again to finish."),
        ],
        "mount" => &[
            ("0", "Mounted."),
            ("1", "Failed: not root, or no idmapped mounts on this filesystem."),
            ("2", "A usage error: a malformed or one-sided map, SRC or DST not a directory."),
        ],
        "umount" => &[
            ("0", "Removed."),
            ("1", "Failed."),
            ("2", "DST is not a mount point, or not an idmapped mount (use umount(8))."),
            ("3", "Refused: an idmapped mount idshift did not make (--force removes it)."),
        ],
        _ => &[
            ("0", "Success."),
            ("1", "A failure reading what was asked for."),
            ("2", "A usage error."),
        ],
    }
}

/// Files idshift reads or writes, and the commands they concern.
const FILES: &[(&str, &str, &[&str])] = &[
    (
        "/etc/subuid, /etc/subgid",
        "The id ranges delegated to each user (subuid(5)); the default map of exec and the ranges \
         an unprivileged shift or migrate may use.",
        &["exec", "shift", "migrate", "ranges", "list"],
    ),
    (
        "/var/lib/lxc, ~/.local/share/lxc",
        "LXC's default lxcpath for root and for other users (-P overrides it).",
        &[
            "exec", "shift", "migrate", "status", "mount", "ranges", "list",
        ],
    ),
    (
        "LXCPATH/NAME/config",
        "A container's config: lxc.idmap, lxc.rootfs.path, lxc.include, lxc.mount.entry.",
        &[
            "exec", "shift", "migrate", "status", "mount", "ranges", "list",
        ],
    ),
    (
        "/etc/lxc/default.conf, ~/.config/lxc/default.conf",
        "The config new containers start from (root's, and other users'): its map.",
        &["exec", "migrate", "ranges", "list"],
    ),
    (
        "PARENT/.NAME.idshift-journal",
        "The journal of a shift of PARENT/NAME: what a killed run needs to finish or roll back.",
        &["shift", "migrate", "status", "list"],
    ),
    (
        "user.idshift.map, user.idshift.pending",
        "Extended attributes on the tree's root: the map recorded by a finished shift, and the id \
         of a pending one's journal.",
        &["shift", "migrate", "status", "list"],
    ),
    (
        "/run/idshift/mounts",
        "Records of the mounts made by idshift mount, so that umount removes only those.",
        &["mount", "umount"],
    ),
];

/// Pages of other programs a reader of these pages wants next.
const SEE_ALSO: &[&str] = &[
    "lxc-usernsexec(1)",
    "lxc.container.conf(5)",
    "subuid(5)",
    "subgid(5)",
    "newuidmap(1)",
    "newgidmap(1)",
    "user_namespaces(7)",
    "mount_setattr(2)",
];
