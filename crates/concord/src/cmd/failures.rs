//! `concord failures`: list the changes a node set aside.

use std::io::Write;

use crate::output;

/// List the changes set aside in a tracked SQLite file or a node's store (`--dir`, any
/// store kind): changes from peers this database refused (a constraint, a value its
/// column cannot hold, a mapping that cannot convert), with their origin, sequence,
/// table, key, the reason and when. A set-aside change is still relayed to other peers
/// and does not stop the stream; fix the cause and the rows converge on the next write.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: super::target::Target,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut opened = args.target.open()?;
    let failures = opened.store.failures()?;
    let mut out = output::stdout();
    if args.json {
        let rows: Vec<_> = failures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "origin": f.origin, "seq": f.seq, "table": f.table, "key": f.key,
                    "reason": f.error, "at_ms": f.at_ms,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else if failures.is_empty() {
        writeln!(out, "no changes set aside")?;
    } else {
        let mut rows = vec![
            ["ORIGIN", "SEQ", "TABLE", "KEY", "REASON", "WHEN"]
                .map(String::from)
                .to_vec(),
        ];
        rows.extend(failures.iter().map(|f| {
            vec![
                f.origin.clone(),
                f.seq.to_string(),
                f.table.clone(),
                f.key.clone(),
                f.error.clone(),
                output::utc(f.at_ms),
            ]
        }));
        out.write_all(output::table(&rows).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
