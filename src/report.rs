//! The one place that prints: per-inode lines and warnings from the engines, and the final
//! reports as text or JSON.
//!
//! A closed stdout (`idshift shift -v DIR MAP | head -1`) stops the printing, never the work:
//! every write checks for `EPIPE` and from then on prints nothing more to that stream, and the
//! exit status still tells how the work went.
//!
//! Paths are printed with [`escape_path`], in text and in JSON alike: valid UTF-8 as it is, every
//! byte that is not part of valid UTF-8 as `\xNN`, and a backslash as `\\`, so that a file name
//! that is not UTF-8 is shown (and can be told from one that spells `\xNN` out) without loss.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::idmap::{IdKind, IdMap};
use crate::shift::inode::InodeError;
use crate::shift::View;

/// Where an engine reports while it works: per-inode events, warnings and progress. The
/// command line's is [`Printer`]; the engines never print.
pub trait Reporter: Sync {
    /// One change, for `-v`.
    fn change(&self, line: &str);
    /// An inode that could not be shifted (the walk goes on).
    fn inode_error(&self, e: &InodeError);
    /// Something the user should know before reading the summary.
    fn warning(&self, text: &str);
    /// Called on a thread of its own while a walk runs: may show `inodes` (of about `total`)
    /// until `done` is set. Shows nothing by default.
    fn progress(&self, inodes: &AtomicU64, total: Option<u64>, done: &AtomicBool) {
        let _ = (inodes, total, done);
    }
}

/// How much progress to show while walking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar when stderr is a terminal.
    #[default]
    Auto,
    /// A bar on a terminal, a line a second otherwise (for logs).
    Always,
    Never,
}

/// A path as text: UTF-8 as it is, but control characters (C0, DEL, C1: a name a container
/// wrote must not forge a line or move a terminal's cursor) and bytes that are not UTF-8 as
/// `\xNN` (each byte), `\` as `\\`. The same in text and JSON.
pub fn escape_path(path: &Path) -> String {
    escape_bytes(path.as_os_str().as_encoded_bytes())
}

/// Bytes as text, escaped as [`escape_path`] says.
pub fn escape_bytes(mut bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                push_escaped(&mut out, s);
                return out;
            }
            Err(e) => {
                let (good, rest) = bytes.split_at(e.valid_up_to());
                push_escaped(&mut out, std::str::from_utf8(good).expect("valid prefix"));
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    let _ = write!(out, "\\x{b:02x}");
                }
                bytes = &rest[bad..];
            }
        }
    }
}

fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

/// `serialize_with` for a path: the escaped text.
pub fn ser_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&escape_path(path))
}

/// `serialize_with` for an optional path: as [`ser_path`], or `null`.
pub fn ser_opt_path<S: serde::Serializer>(
    path: &Option<std::path::PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => ser_path(p, s),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for a list of paths.
pub fn ser_paths<S: serde::Serializer>(
    paths: &[std::path::PathBuf],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| escape_path(p)))
}

/// A map as JSON: its text, and its extents by kind with every id a number.
///
/// ```json
/// {"text": "u:0:100000:65536 g:0:100000:65536", "host_view": false,
///  "uid": [{"inside": 0, "host": 100000, "count": 65536}],
///  "gid": [{"inside": 0, "host": 100000, "count": 65536}]}
/// ```
///
/// The host view (ids as the host sees them) is `{"text": "host", "host_view": true, "uid": [],
/// "gid": []}`.
pub struct JsonView<'a>(pub &'a View);

impl serde::Serialize for JsonView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(serde::Serialize)]
        struct Extent {
            inside: u32,
            host: u32,
            count: u32,
        }
        let extents = |kind: IdKind| -> Vec<Extent> {
            match self.0 {
                View::Host => Vec::new(),
                View::Map(m) => m
                    .entries(kind)
                    .iter()
                    .map(|e| Extent {
                        inside: e.ns_range().start(),
                        host: e.host_range().start(),
                        count: e.ns_range().count(),
                    })
                    .collect(),
            }
        };
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("text", &self.0.to_string())?;
        map.serialize_entry("host_view", &matches!(self.0, View::Host))?;
        map.serialize_entry("uid", &extents(IdKind::Uid))?;
        map.serialize_entry("gid", &extents(IdKind::Gid))?;
        map.end()
    }
}

/// `serialize_with` for a view ([`JsonView`]).
pub fn ser_view<S: serde::Serializer>(view: &View, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&JsonView(view), s)
}

/// `serialize_with` for an optional view: [`JsonView`] or `null`.
pub fn ser_opt_view<S: serde::Serializer>(view: &Option<View>, s: S) -> Result<S::Ok, S::Error> {
    match view {
        Some(v) => s.serialize_some(&JsonView(v)),
        None => s.serialize_none(),
    }
}

/// `serialize_with` for an optional map: [`JsonView`] or `null`.
pub fn ser_opt_map<S: serde::Serializer>(map: &Option<IdMap>, s: S) -> Result<S::Ok, S::Error> {
    ser_opt_view(&map.clone().map(View::Map), s)
}

/// A stream that stops printing, quietly, once its reader is gone.
struct Stream {
    closed: AtomicBool,
    lock: Mutex<()>,
}

impl Stream {
    const fn new() -> Stream {
        Stream {
            closed: AtomicBool::new(false),
            lock: Mutex::new(()),
        }
    }

    fn write(&self, out: &mut dyn Write, text: &str) {
        if self.closed.load(Relaxed) {
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // EPIPE or any other failure: the reader is gone; the work goes on.
            self.closed.store(true, Relaxed);
        }
    }
}

static STDOUT: Stream = Stream::new();
static STDERR: Stream = Stream::new();

/// Prints to stdout; nothing more once stdout is closed.
pub fn out(text: &str) {
    STDOUT.write(&mut std::io::stdout().lock(), text);
}

/// Prints a line to stderr, prefixed `idshift: `.
pub fn err_line(text: &str) {
    STDERR.write(&mut std::io::stderr().lock(), &format!("idshift: {text}\n"));
}

/// Prints a report as JSON (versioned by its type) or as its text.
pub fn print(json: bool, report: &impl serde::Serialize, text: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => out(&(s + "\n")),
            Err(e) => err_line(&format!("cannot write the report as JSON: {e}")),
        }
    } else {
        out(&text());
    }
}

/// The reporter of the command line: `-v` lines to stdout, inode errors, warnings and progress
/// to stderr.
#[derive(Clone, Copy, Debug, Default)]
pub struct Printer {
    pub progress: Progress,
}

impl Printer {
    /// A printer that shows no progress.
    pub const PLAIN: Printer = Printer {
        progress: Progress::Never,
    };
}

impl Reporter for Printer {
    fn progress(&self, inodes: &AtomicU64, total: Option<u64>, done: &AtomicBool) {
        use std::io::IsTerminal;
        match self.progress {
            Progress::Never => {}
            Progress::Auto if !std::io::stderr().is_terminal() => {}
            _ if std::io::stderr().is_terminal() => progress_bar(inodes, total, done),
            _ => progress_lines(inodes, total, done),
        }
    }

    fn change(&self, line: &str) {
        out(&format!("{line}\n"));
    }

    fn inode_error(&self, e: &InodeError) {
        err_line(&format!(
            "{}: {}: {}",
            escape_path(&e.path),
            e.op,
            e.message
        ));
    }

    fn warning(&self, text: &str) {
        err_line(&format!("warning: {text}"));
    }
}

/// A bar (or a spinner without `total`) on the terminal, redrawn 10 times a second.
fn progress_bar(inodes: &AtomicU64, total: Option<u64>, done: &AtomicBool) {
    let style = |template: &str| {
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} inodes/s", s.per_sec());
                },
            )
    };
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n)
            .with_style(style("{bar:40} {pos}/{len} inodes  {rate}  ETA {eta}")),
        None => indicatif::ProgressBar::new_spinner()
            .with_style(style("{spinner} {pos} inodes  {rate}")),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(10));
    while !done.load(Relaxed) {
        bar.set_position(inodes.load(Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// A plain line a second, for a log (`--progress always` without a terminal).
fn progress_lines(inodes: &AtomicU64, total: Option<u64>, done: &AtomicBool) {
    let start = Instant::now();
    let mut last = Instant::now();
    while !done.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let n = inodes.load(Relaxed);
            let rate = n as f64 / start.elapsed().as_secs_f64();
            err_line(&match total {
                Some(t) => format!("{n}/{t} inodes, {rate:.0}/s"),
                None => format!("{n} inodes, {rate:.0}/s"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn paths_escape_bytes_that_are_not_utf8_and_backslashes() {
        let p = |b: &[u8]| escape_path(Path::new(std::ffi::OsStr::from_bytes(b)));
        assert_eq!(p(b"etc/passwd"), "etc/passwd");
        assert_eq!(p("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(p(b"bad\xffname"), "bad\\xffname");
        assert_eq!(
            p(b"a\\xffb"),
            "a\\\\xffb",
            "a spelled-out escape stays distinct"
        );
        assert_eq!(p(b"\xe2\x82"), "\\xe2\\x82", "a cut-short sequence");
        assert_eq!(p(b"\xc3\xa9\xc3"), "\u{e9}\\xc3");
    }

    #[test]
    fn paths_escape_control_characters_as_their_bytes() {
        let p = |b: &[u8]| escape_path(Path::new(std::ffi::OsStr::from_bytes(b)));
        assert_eq!(p(b"a\nb"), "a\\x0ab", "a newline cannot forge a line");
        assert_eq!(
            p(b"esc\x1b[31m"),
            "esc\\x1b[31m",
            "no escape sequence reaches a terminal"
        );
        assert_eq!(p(b"\t\r\x7f"), "\\x09\\x0d\\x7f", "C0 and DEL");
        assert_eq!(
            p("\u{9b}2J".as_bytes()),
            "\\xc2\\x9b2J",
            "C1 (CSI) as its UTF-8 bytes"
        );
        assert_eq!(
            p("\u{a0}\u{e9}".as_bytes()),
            "\u{a0}\u{e9}",
            "printable stays"
        );
    }

    #[test]
    fn json_of_a_non_utf8_path_is_valid() {
        #[derive(serde::Serialize)]
        struct R {
            #[serde(serialize_with = "ser_path")]
            p: std::path::PathBuf,
        }
        let r = R {
            p: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"x\xff")),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"p":"x\\xff"}"#);
    }
}
