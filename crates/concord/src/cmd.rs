//! One module per subcommand, and `target`, the FILE-or-`--dir` argument the read-only
//! commands share.

pub(crate) mod conflicts;
pub(crate) mod demo;
pub(crate) mod failures;
pub(crate) mod info;
pub(crate) mod init;
pub(crate) mod merge;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod target;
pub(crate) mod track;
pub(crate) mod untrack;
pub(crate) mod verify;
