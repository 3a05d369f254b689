//! `idshift completions SHELL`: a completion script for the shell, on stdout.
//!
//! clap_complete writes the static part (commands, options, value names). For bash a wrapper
//! completes what only the machine knows: container names (asked of `idshift list --names`,
//! with the `-P` given earlier on the line) after `--container`, `--from-container`,
//! `--to-container` and as `migrate`'s NAME, and `auto`/`host` after `--to`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Result;

/// The bash wrapper around clap_complete's `_idshift`; it replaces the `complete` line.
const BASH_DYNAMIC: &str = r#"
# Container names of the lxcpath the line names (-P DIR / --lxcpath DIR), else the default.
_idshift_container_names() {
    local i lxcpath=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -P|--lxcpath) lxcpath=(-P "${COMP_WORDS[i+1]}") ;;
        esac
    done
    "${COMP_WORDS[0]}" list --names "${lxcpath[@]}" 2>/dev/null
}

_idshift_dynamic() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    local sub="${COMP_WORDS[1]}"
    case "$prev" in
        --container|--from-container|--to-container)
            COMPREPLY=($(compgen -W "$(_idshift_container_names)" -- "$cur"))
            return 0 ;;
        --to)
            case "$sub" in
                migrate) COMPREPLY=($(compgen -W "auto host" -- "$cur")); return 0 ;;
                shift) COMPREPLY=($(compgen -W "host" -- "$cur")); return 0 ;;
            esac ;;
    esac
    if [[ "$sub" == migrate && "$cur" != -* ]]; then
        # NAME is migrate's only positional: offer names until one is given.
        local i positional=0
        for ((i = 2; i < COMP_CWORD; i++)); do
            case "${COMP_WORDS[i]}" in
                -P|--lxcpath|--to|--threads|--progress) ((i++)) ;;
                --to-map) while ((i + 1 < COMP_CWORD)) && [[ "${COMP_WORDS[i+1]}" != -* ]]; do ((i++)); done ;;
                -*) ;;
                *) positional=1 ;;
            esac
        done
        if ((positional == 0)); then
            COMPREPLY=($(compgen -W "$(_idshift_container_names)" -- "$cur"))
            return 0
        fi
    fi
    _idshift "$@"
}

complete -F _idshift_dynamic -o bashdefault -o default idshift
"#;

pub fn run(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "idshift", &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    if shell == clap_complete::Shell::Bash {
        // clap_complete's registration of `_idshift` gives way to the wrapper's.
        if let Some(at) = script.find("\nif [[ \"${BASH_VERSINFO[0]}\"") {
            script.truncate(at + 1);
        }
        script += BASH_DYNAMIC;
    }
    crate::report::out(&script);
    Ok(())
}
