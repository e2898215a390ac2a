//! `concord info`: what Concord knows about one store.

use std::io::Write;

use anyhow::Context;

use crate::output;

/// Show a store's node id, tracked tables, version vector, change-log size, and the
/// numbers of recorded conflicts and set-aside changes: of a tracked SQLite file, or of
/// the store of a node (`--dir`, any store kind).
///
/// `--dir NODE --fingerprint` prints only the node's certificate fingerprint, what
/// peers put in their `[[peers]]` entry for it (it works before the node first runs).
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    target: super::target::Target,
    /// Print only the node's fingerprint (with --dir).
    #[arg(long, requires = "dir", conflicts_with = "json")]
    fingerprint: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    if args.fingerprint {
        let dir = args
            .target
            .dir()
            .context("--fingerprint needs --dir NODE")?;
        let identity = concord_node::Identity::load(&dir.join("identity"))
            .with_context(|| format!("reading the identity of the node in {}", dir.display()))?;
        let mut out = output::stdout();
        writeln!(out, "{}", identity.fingerprint())?;
        out.flush()?;
        return Ok(());
    }
    let opened = args.target.open()?;
    let (tables, location, pending) = (opened.tables, opened.location, opened.pending);
    let mut store = opened.store;
    let vv: Vec<(String, u64)> = store
        .version_vector()
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
    let log = store.log_len()?;
    let conflicts = store.conflict_count()?;
    let failures = store.failures()?.len();
    let system = if store.is_relay() {
        "relay"
    } else {
        store.system()
    };
    let mut out = output::stdout();
    if args.json {
        let value = serde_json::json!({
            "db": location,
            "store": system,
            "node_id": store.node_id().to_string(),
            "tables": tables,
            "version_vector": vv.iter().map(|(n, s)| serde_json::json!({"origin": n, "seq": s})).collect::<Vec<_>>(),
            "log_entries": log,
            "pending_writes": pending,
            "conflicts": conflicts,
            "failures": failures,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        writeln!(out, "database:       {location}")?;
        writeln!(out, "store:          {system}")?;
        writeln!(out, "node:           {}", store.node_id())?;
        writeln!(out, "tables:         {}", tables.join(", "))?;
        writeln!(out, "log entries:    {log}")?;
        if let Some(pending) = pending {
            writeln!(out, "pending writes: {pending}")?;
        }
        writeln!(out, "conflicts:      {conflicts}")?;
        writeln!(out, "set aside:      {failures}")?;
        let mut rows = vec![vec!["ORIGIN".to_owned(), "HELD UP TO".to_owned()]];
        rows.extend(vv.into_iter().map(|(n, s)| vec![n, s.to_string()]));
        out.write_all(table(&rows).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Renders rows as left-aligned columns; the first row is the header.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    output::table(rows)
}
