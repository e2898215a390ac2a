//! Measures range-based reconciliation on the wire: two copies of a table of N rows that
//! differ in D rows (changed, missing on one side, missing on the other), reconciled
//! with the default tunables. Prints the messages exchanged (each is half a round
//! trip), the bytes they take encoded with postcard, and the time both sides spent.
//!
//! `cargo run --release -p concord-core --example reconcile -- [ROWS] [DIFFERENCES]`
//! (default 1,000,000 and 10). Items live in memory here, so this measures the protocol,
//! not a store's scans.

use std::time::Instant;

use concord_core::reconcile::{ItemHash, Reconciler, SortedItems};

fn item(n: u64, version: u8) -> (Vec<u8>, ItemHash) {
    // Keys shaped like an encoded integer primary key; hashes spread like real ones.
    let key = n.to_be_bytes().to_vec();
    let mut hash = [0u8; 32];
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(version);
    for chunk in hash.chunks_mut(8) {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    (key, hash)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let differences: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let a: Vec<_> = (0..rows).map(|n| item(n, 0)).collect();
    let mut b = a.clone();
    // Spread the differences over the key space, a third of each kind.
    let step = rows / differences.max(1);
    let (mut removed_from_a, mut removed_from_b) = (Vec::new(), Vec::new());
    for d in 0..differences {
        let at = (d * step + step / 2) as usize;
        match d % 3 {
            0 => b[at] = item(at as u64, 1),
            1 => removed_from_b.push(at),
            _ => removed_from_a.push(at),
        }
    }
    let b: Vec<_> = b
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !removed_from_b.contains(i))
        .map(|(_, item)| item)
        .collect();
    let mut a: Vec<_> = a
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !removed_from_a.contains(i))
        .map(|(_, item)| item)
        .collect();
    a.shrink_to_fit();
    let (mut a, mut b) = (SortedItems(a), SortedItems(b));

    let started = Instant::now();
    let run = Reconciler::default().run_local(&mut a, &mut b)?;
    let elapsed = started.elapsed();
    if run.differences.len() as u64 != differences {
        return Err(format!(
            "found {} differences, expected {differences}",
            run.differences.len()
        )
        .into());
    }
    println!(
        "rows {rows}, differences {differences}: {} messages ({} round trips), {} bytes, {:.2} s",
        run.messages,
        run.messages.div_ceil(2),
        run.bytes,
        elapsed.as_secs_f64()
    );
    Ok(())
}
