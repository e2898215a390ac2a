//! `concord failures`: list, retry or discard the changes a node set aside.

use std::io::Write;

use anyhow::Context;
use concord_core::NodeId;
use concord_node::link_failures::LinkFailures;

use crate::output;

/// List the changes set aside in a tracked SQLite file or a node's store (`--dir`, any
/// store kind): changes from peers this database refused (a column or table it does not
/// have yet, a constraint, a value its column cannot hold, a mapping that cannot
/// convert), with their origin, sequence, table, key, the reason and when.
///
/// A set-aside change does not stop the stream, is still relayed to other peers, and is
/// kept whole with its source transaction. A node tries again by itself when its
/// database's schema changes (a column added, say); `concord failures retry` tries
/// now, after you fixed another cause; `concord failures discard` gives up on them.
///
/// With `--dir`, the list also holds the source transactions a link did not carry
/// because its mapping cannot convert them: "outgoing to peer P" (this node withheld
/// them from P; every other peer received them) and "withheld by peer P" (P withheld
/// them from this node). `retry` has the node send an outgoing transaction's rows again,
/// as they are now, at its next session with P; `discard` forgets either kind.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    target: Option<super::target::Target>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Apply every set-aside transaction the database now accepts; the rest stay.
    Retry {
        #[command(flatten)]
        target: super::target::Target,
    },
    /// Forget set-aside transactions for good (they stay in the log, so peers still
    /// receive them): all of them, or the one holding change ORIGIN SEQ.
    Discard {
        #[command(flatten)]
        target: super::target::Target,
        /// Every set-aside transaction.
        #[arg(long, conflicts_with_all = ["origin", "seq"], required_unless_present = "origin")]
        all: bool,
        /// The origin (node id) of a change in the transaction to forget.
        #[arg(long, requires = "seq")]
        origin: Option<NodeId>,
        /// That change's sequence number.
        #[arg(long, requires = "origin")]
        seq: Option<u64>,
    },
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Retry { target }) => retry(&target),
        Some(Action::Discard {
            target,
            all: _,
            origin,
            seq,
        }) => discard(&target, origin.zip(seq)),
        None => match args.target {
            Some(target) => list(&target, args.json),
            None => anyhow::bail!("name a SQLite file or give --dir NODE"),
        },
    }
}

fn retry(target: &super::target::Target) -> anyhow::Result<()> {
    let _held = target.hold("concord failures retry")?;
    let mut opened = target.open()?;
    let report = opened
        .store
        .retry_set_aside()
        .context("retrying the changes set aside")?;
    let marked = match target.dir() {
        Some(dir) => LinkFailures::at(dir)
            .request_retry(None)
            .context("marking the outgoing transactions to send again")?,
        None => 0,
    };
    let mut out = output::stdout();
    writeln!(
        out,
        "applied {} set-aside changes; {} still set aside",
        report.applied, report.set_aside
    )?;
    if marked > 0 {
        writeln!(
            out,
            "{marked} outgoing transactions will be sent again, as their rows are now, \
             at the next session with their peer (start or restart `concord serve`)"
        )?;
    }
    out.flush()?;
    Ok(())
}

fn discard(target: &super::target::Target, which: Option<(NodeId, u64)>) -> anyhow::Result<()> {
    let _held = target.hold("concord failures discard")?;
    let mut opened = target.open()?;
    let forgotten = opened
        .store
        .discard_set_aside(which)
        .context("discarding changes set aside")?
        + match target.dir() {
            Some(dir) => LinkFailures::at(dir)
                .discard(which)
                .context("discarding the transactions a link did not carry")?,
            None => 0,
        };
    if forgotten == 0
        && let Some((origin, seq)) = which
    {
        anyhow::bail!("no set-aside change {origin}/{seq} (see `concord failures`)");
    }
    let mut out = output::stdout();
    writeln!(out, "discarded {forgotten} set-aside changes")?;
    out.flush()?;
    Ok(())
}

fn list(target: &super::target::Target, json: bool) -> anyhow::Result<()> {
    let mut opened = target.open()?;
    let failures = opened.store.failures()?;
    let links = match target.dir() {
        Some(dir) => LinkFailures::at(dir)
            .load()
            .context("reading the transactions a link did not carry")?,
        None => Vec::new(),
    };
    let mut out = output::stdout();
    if json {
        let mut rows: Vec<_> = failures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "direction": "incoming",
                    "origin": f.origin, "seq": f.seq, "table": f.table, "key": f.key,
                    "reason": f.error, "at_ms": f.at_ms,
                })
            })
            .collect();
        rows.extend(links.iter().map(|l| {
            let (table, key) = l.first_row();
            serde_json::json!({
                "direction": l.direction.word(), "peer": l.peer,
                "origin": l.origin, "seq": l.first_seq, "last_seq": l.last_seq,
                "table": table, "key": key,
                "rows": l.rows.iter().map(|r| serde_json::json!({"table": r.table, "key": r.key_text})).collect::<Vec<_>>(),
                "reason": l.reason, "at_ms": l.at_ms, "retry": l.retry,
            })
        }));
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else if failures.is_empty() && links.is_empty() {
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
        rows.extend(links.iter().map(|l| {
            let (table, mut key) = l.first_row();
            if l.rows.len() > 1 {
                key = format!("{key} and {} more", l.rows.len() - 1);
            }
            let seq = if l.first_seq == l.last_seq {
                l.first_seq.to_string()
            } else {
                format!("{}..{}", l.first_seq, l.last_seq)
            };
            vec![
                l.origin.clone(),
                seq,
                table,
                key,
                l.reason.clone(),
                output::utc(l.at_ms),
            ]
        }));
        out.write_all(output::table(&rows).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
