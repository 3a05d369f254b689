//! idshift: enter and shift the uid/gid mappings of unprivileged Linux containers.
//!
//! - [`cmd`]: the application, one file per subcommand; [`cli`] defines their arguments and
//!   [`report`] is the one place that prints;
//! - the engines, which return values and report through a [`report::Reporter`] they are
//!   given: [`shift`] (remap a tree's ownership, crash-safe), [`status`], [`migrate`],
//!   [`mount`] (idmapped mounts), [`ranges`], and [`userns`] (`exec`: a command in a new user
//!   namespace);
//! - what the engines share: [`container`] (an LXC container named on the command line), [`tree`] (a tree opened safely, locked, and walked in parallel by
//!   directory fds), [`idmap`] (the mapping model and one parser per source of maps),
//!   [`policy`] (what root may do for a user), [`inuse`] (is a tree in use);
//! - [`sys`]: the only place with `unsafe` and raw `libc` calls.
#![deny(unsafe_code)]

pub mod cli;
pub mod cmd;
pub mod container;
pub mod error;
pub mod idmap;
pub mod inuse;
pub mod list;
pub mod migrate;
pub mod mount;
pub mod policy;
pub mod ranges;
pub mod report;
pub mod shift;
pub mod status;
pub mod sys;
pub mod tree;
pub mod userns;
