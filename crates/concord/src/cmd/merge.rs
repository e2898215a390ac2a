//! `concord merge`: bring several tracked SQLite files into agreement.

use std::path::PathBuf;

use std::io::Write;

use anyhow::Context;
use concord_sqlite::{SqliteStore, merge_all};

/// Bring tracked SQLite files into agreement, without a network.
///
/// Every change one file holds and another lacks is applied to it, with the same merge
/// rules, conflict recording and per-transaction atomicity as network sync. A source
/// transaction a file refuses (a constraint, a value its column cannot hold) is set
/// aside there, as a node does: recorded for `concord failures`, and the rest goes on.
/// The files may be open in other programs meanwhile: Concord waits for their write
/// locks and holds its own for one batch at a time.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Two or more tracked SQLite files.
    #[arg(required = true, num_args = 2..)]
    dbs: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut out = crate::output::stdout();
    let _held = args
        .dbs
        .iter()
        .map(|p| super::hold_file(p, "concord merge"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut stores = args
        .dbs
        .iter()
        .map(|p| SqliteStore::open(p).with_context(|| format!("opening {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    writeln!(out, "merging {} files", stores.len())?;
    let reports =
        merge_all(&mut stores).context("merge failed; nothing of the failed batch was applied")?;
    if args.json {
        let rows: Vec<_> = args
            .dbs
            .iter()
            .zip(&reports)
            .map(|(p, r)| {
                serde_json::json!({
                    "db": p.display().to_string(),
                    "received": r.received,
                    "applied": r.applied,
                    "duplicates": r.duplicates,
                    "conflicts": r.conflicts,
                    "set_aside": r.set_aside,
                    "captured": r.captured,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        for (path, r) in args.dbs.iter().zip(&reports) {
            write!(
                out,
                "{}: applied {} changes ({} already held), {} conflicts recorded",
                path.display(),
                r.applied,
                r.duplicates,
                r.conflicts
            )?;
            if r.set_aside > 0 {
                write!(
                    out,
                    ", {} set aside (see `concord failures {}`)",
                    r.set_aside,
                    path.display()
                )?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}
