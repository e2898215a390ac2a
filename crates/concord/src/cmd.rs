//! One module per subcommand.

pub(crate) mod conflicts;
pub(crate) mod demo;
pub(crate) mod info;
pub(crate) mod init;
pub(crate) mod merge;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod track;
pub(crate) mod untrack;
