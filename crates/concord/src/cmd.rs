//! One module per subcommand.

pub(crate) mod conflicts;
pub(crate) mod demo;
pub(crate) mod info;
pub(crate) mod merge;
pub(crate) mod track;
pub(crate) mod untrack;
