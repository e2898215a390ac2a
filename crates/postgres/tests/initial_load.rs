//! Initial load (tracking tables that already hold rows) against a real PostgreSQL
//! server.
//!
//! Risks covered:
//! - tracking a table while other sessions keep inserting, updating and deleting loses
//!   a write (neither in the backfill nor captured by the trigger) or duplicates one (in
//!   both), so a replica that joins later differs from the source; also when the
//!   database's default isolation is `REPEATABLE READ`;
//! - tables named child first (`orders` before `customers`) are backfilled child first,
//!   so a destination enforcing the foreign key (PostgreSQL always does) refuses
//!   `orders` rows whose customer has not arrived yet; from a PostgreSQL source and from
//!   a SQLite one;
//! - the same log applied to a SQLite replica differs from the source;
//! - a destination that already holds some of the same keys (equal or different values)
//!   and rows of its own does not converge with the source, or the differing rows are
//!   not recorded as conflicts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestDb, all_changes};
use concord_core::{Change, PrimaryKey, Value};
use concord_postgres::{PgStore, StoreOptions, pull};
use concord_sqlite::SqliteStore;
use postgres::{Client, NoTls};

/// PostgreSQL enforces the foreign key on every session, Concord's included.
const SCHEMA: &str = "
CREATE TABLE customers(id bigint PRIMARY KEY, name text NOT NULL, score bigint NOT NULL);
CREATE TABLE orders(id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
                    amount bigint NOT NULL, note text);";

/// The same tables in SQLite.
const SQLITE_SCHEMA: &str = "
CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, score INTEGER NOT NULL);
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
                    amount INTEGER NOT NULL, note TEXT);";

/// Tables as given to `track`: the child first, on purpose.
const TABLES: &[&str] = &["orders", "customers"];

type Customer = (i64, String, i64);
type Order = (i64, i64, i64, Option<String>);

fn customers(client: &mut Client) -> Vec<Customer> {
    client
        .query("SELECT id, name, score FROM customers ORDER BY id", &[])
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn orders(client: &mut Client) -> Vec<Order> {
    client
        .query(
            "SELECT id, customer_id, amount, note FROM orders ORDER BY id",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn sqlite_tables(path: &std::path::Path) -> (Vec<Customer>, Vec<Order>) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let customers = conn
        .prepare("SELECT id, name, score FROM customers ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let orders = conn
        .prepare("SELECT id, customer_id, amount, note FROM orders ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let violations: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(violations, 0, "the SQLite replica breaks its foreign key");
    (customers, orders)
}

/// Fills the tables before anything is tracked: `customers` 1..=n, two orders each.
fn prefill(client: &mut Client, customers: i64) {
    client
        .batch_execute(&format!(
            "INSERT INTO customers SELECT c, 'customer ' || c, 0 FROM generate_series(1, {customers}) c;
             INSERT INTO orders SELECT o, (o + 1) / 2, o * 100, NULL FROM generate_series(1, {}) o;",
            2 * customers
        ))
        .unwrap();
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// An ordinary client writing on its own session: inserts of customers with their
/// orders, orders of existing customers, updates, deletes of orders and of customers
/// with their orders (child rows first, in one transaction), key changes.
struct Writer {
    url: String,
    client: Client,
    rng: Rng,
    next_customer: i64,
    next_order: i64,
}

impl Writer {
    fn write_once(&mut self) -> Result<(), postgres::Error> {
        let Writer {
            client,
            rng,
            next_customer,
            next_order,
            ..
        } = self;
        let pick = |rng: &mut Rng, n: i64| 1 + rng.below(n as u64) as i64;
        match rng.below(10) {
            0..=2 => {
                let (c, o) = (*next_customer, *next_order);
                *next_customer += 1;
                *next_order += 1;
                let mut tx = client.transaction()?;
                tx.execute(
                    "INSERT INTO customers VALUES ($1, $2, 0)",
                    &[&c, &format!("customer {c}")],
                )?;
                tx.execute(
                    "INSERT INTO orders VALUES ($1, $2, $3, 'new')",
                    &[&o, &c, &(o * 100)],
                )?;
                tx.commit()?;
            }
            3 | 4 => {
                let o = *next_order;
                *next_order += 1;
                let c = pick(rng, *next_customer);
                client.execute(
                    "INSERT INTO orders(id, customer_id, amount)
                     SELECT $1, id, $2 FROM customers WHERE id >= $3 ORDER BY id LIMIT 1",
                    &[&o, &(o * 10), &c],
                )?;
            }
            5 => {
                client.execute(
                    "UPDATE customers SET score = score + 1 WHERE id = $1",
                    &[&pick(rng, *next_customer)],
                )?;
            }
            6 => {
                client.execute(
                    "UPDATE orders SET amount = amount + 1, note = 'updated' WHERE id = $1",
                    &[&pick(rng, *next_order)],
                )?;
            }
            7 => {
                client.execute(
                    "DELETE FROM orders WHERE id = $1",
                    &[&pick(rng, *next_order)],
                )?;
            }
            8 => {
                let c = pick(rng, *next_customer);
                let mut tx = client.transaction()?;
                tx.execute("DELETE FROM orders WHERE customer_id = $1", &[&c])?;
                tx.execute("DELETE FROM customers WHERE id = $1", &[&c])?;
                tx.commit()?;
            }
            _ => {
                let o = *next_order;
                *next_order += 1;
                client.execute(
                    "UPDATE orders SET id = $1 WHERE id = $2",
                    &[&o, &pick(rng, o - 1)],
                )?;
            }
        }
        Ok(())
    }

    /// Writes until `stop`, counting committed writes in `writes`; returns the errors
    /// seen, by SQLSTATE. A failed transaction is rolled back (dropped), as an
    /// application would; after a broken connection a new one is opened.
    fn run(mut self, stop: &AtomicBool, writes: &AtomicU64) -> BTreeMap<String, u64> {
        let mut errors = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            match self.write_once() {
                Ok(()) => {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let code = e.code().map(|c| c.code().to_owned());
                    *errors
                        .entry(code.clone().unwrap_or_else(|| e.to_string()))
                        .or_default() += 1;
                    if code.is_none() || self.client.is_closed() {
                        self.client = Client::connect(&self.url, NoTls).unwrap();
                    }
                }
            }
        }
        errors
    }
}

/// Waits until `writes` reaches `target` (a minute at most).
fn wait_for(writes: &AtomicU64, target: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while writes.load(Ordering::Relaxed) < target {
        assert!(std::time::Instant::now() < deadline, "the writer is stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Per (table, key), what the log says about the row so far: its causal length.
type Lives = BTreeMap<(String, Vec<u8>), u64>;

/// Walks a log in order, as a destination applies it, and panics at the first change
/// that shows a lost or duplicated write or a foreign-key violation:
/// - a second insert of a live row (same causal length, every column: the backfill and
///   a trigger both recorded it);
/// - a delete of a row the log never inserted, or a causal length that skips a life;
/// - an `orders` row whose customer is not live at that point, or a customer deleted
///   while an order still references it.
///
/// Returns how many rows were inserted (lives begun) per table.
fn check_log(changes: &[Change]) -> BTreeMap<String, u64> {
    let columns = BTreeMap::from([("customers", 3), ("orders", 4)]);
    let mut lives = Lives::new();
    let mut inserted = BTreeMap::<String, u64>::new();
    let mut order_customer = BTreeMap::<i64, i64>::new();
    let customer_live = |lives: &Lives, customer: i64| {
        let k = PrimaryKey::encode(&[Value::Integer(customer)]).unwrap();
        lives
            .get(&("customers".to_owned(), k.as_bytes().to_vec()))
            .is_some_and(|cl| cl % 2 == 1)
    };
    for c in changes {
        let id = (c.table.clone(), c.key.as_bytes().to_vec());
        let last = lives.get(&id).copied().unwrap_or(0);
        let cl = c.causal_length.0;
        let whole = c.columns.len() == columns[c.table.as_str()];
        if c.is_delete() {
            assert_eq!(cl, last + 1, "delete of a row not live: {c:?}");
        } else if cl == last + 1 {
            assert!(whole, "a new life without every column: {c:?}");
            *inserted.entry(c.table.clone()).or_default() += 1;
        } else {
            assert_eq!(cl, last, "a change skipping a life: {c:?}");
            assert!(
                !whole,
                "a second insert of a live row (backfilled and captured): {c:?}"
            );
        }
        lives.insert(id, cl);
        let key = match c.key.decode().unwrap().as_slice() {
            [Value::Integer(i)] => *i,
            other => panic!("unexpected key {other:?}"),
        };
        match c.table.as_str() {
            "orders" if c.is_delete() => {
                order_customer.remove(&key);
            }
            "orders" => {
                if let Some(col) = c.columns.iter().find(|col| col.column == "customer_id") {
                    let Value::Integer(customer) = col.value else {
                        panic!("customer_id {:?}", col.value)
                    };
                    assert!(
                        customer_live(&lives, customer),
                        "order {key} references customer {customer}, not live at this point of the log"
                    );
                    order_customer.insert(key, customer);
                }
            }
            "customers" if c.is_delete() => {
                assert!(
                    !order_customer.values().any(|&v| v == key),
                    "customer {key} deleted while an order references it"
                );
            }
            _ => {}
        }
    }
    inserted
}

concord_harness::server_tests! {
    fn initial_load_under_concurrent_writes_loses_and_duplicates_nothing(server: postgres) {
        let source = TestDb::new(server, SCHEMA);
        const CUSTOMERS: i64 = 300;
        prefill(&mut source.client(), CUSTOMERS);
        let writer = Writer {
            url: source.url.clone(),
            client: source.client(),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            next_customer: CUSTOMERS + 1,
            next_order: 2 * CUSTOMERS + 1,
        };
        // Sessions opened from now on (Concord's) default to REPEATABLE READ, a setting
        // some databases use; tracking must not depend on the default.
        let name: String = source
            .client()
            .query_one("SELECT current_database()", &[])
            .unwrap()
            .get(0);
        source
            .client()
            .batch_execute(&format!(
                "ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'"
            ))
            .unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, writes) = (stop.clone(), writes.clone());
            std::thread::spawn(move || writer.run(&stop, &writes))
        };
        wait_for(&writes, 100);
        let before = writes.load(Ordering::Relaxed);
        let mut src = PgStore::track(&source.url, TABLES, StoreOptions::default()).unwrap();
        let tracked_at = writes.load(Ordering::Relaxed);
        // Keep writing after tracking, with a capture in the middle.
        wait_for(&writes, tracked_at + 100);
        src.capture().unwrap();
        wait_for(&writes, writes.load(Ordering::Relaxed) + 100);
        stop.store(true, Ordering::Relaxed);
        let errors = writer.join().unwrap();
        println!(
            "writes: {} committed ({} while tracking); failed: {errors:?}",
            writes.load(Ordering::Relaxed),
            tracked_at - before
        );
        src.capture().unwrap();
        assert_eq!(src.pending_len().unwrap(), 0);

        let changes = all_changes(&src);
        assert_eq!(changes.len() as u64, src.log_len().unwrap());
        let inserted = check_log(&changes);
        println!("log: {} changes, lives begun {inserted:?}", changes.len());
        let expected = (
            customers(&mut source.client()),
            orders(&mut source.client()),
        );
        assert!(!expected.1.is_empty());

        // PostgreSQL to PostgreSQL.
        let dest = TestDb::new(server, SCHEMA);
        let mut dst = PgStore::track(&dest.url, TABLES, StoreOptions::default()).unwrap();
        let report = pull(&mut src, &mut dst).unwrap();
        assert_eq!(report.applied as usize, changes.len());
        assert!(dst.failures().unwrap().is_empty());
        assert!(src.failures().unwrap().is_empty());
        assert_eq!(
            (customers(&mut dest.client()), orders(&mut dest.client())),
            expected
        );

        // PostgreSQL to SQLite.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(SQLITE_SCHEMA)
            .unwrap();
        let mut lite = SqliteStore::track(&path, TABLES, StoreOptions::default()).unwrap();
        let report = pull(&mut src, &mut lite).unwrap();
        assert_eq!(report.applied as usize, changes.len());
        assert!(lite.failures().unwrap().is_empty());
        assert_eq!(sqlite_tables(&path), expected);
    }

    fn a_sqlite_initial_load_named_child_first_applies_to_postgres_enforcing_foreign_keys(
        server: postgres,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SQLITE_SCHEMA).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO customers SELECT i, 'customer ' || i, 0 FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
             INSERT INTO orders SELECT i, (i + 1) / 2, i * 100, NULL FROM n;",
        )
        .unwrap();
        drop(conn);
        let mut lite = SqliteStore::track(&path, TABLES, StoreOptions::default()).unwrap();
        let dest = TestDb::new(server, SCHEMA);
        let mut pg = PgStore::track(&dest.url, TABLES, StoreOptions::default()).unwrap();
        let report = pull(&mut lite, &mut pg).unwrap();
        assert_eq!(report.applied, 600);
        assert!(pg.failures().unwrap().is_empty());
        assert_eq!(
            (customers(&mut dest.client()), orders(&mut dest.client())),
            sqlite_tables(&path)
        );
    }

    fn a_partly_filled_destination_converges_with_the_source(server: postgres) {
        let (a, b) = (TestDb::new(server, SCHEMA), TestDb::new(server, SCHEMA));
        prefill(&mut a.client(), 10);
        // b: customers 1-5 and their orders as in a; 6-8 with other values, order 16 with
        // another amount; customers 20-21 and order 40 of its own.
        prefill(&mut b.client(), 8);
        b.client()
            .batch_execute(
                "UPDATE customers SET name = 'b ' || name, score = 7 WHERE id BETWEEN 6 AND 8;
                 UPDATE orders SET amount = amount + 1 WHERE id = 16;
                 INSERT INTO customers VALUES (20, 'b only', 1), (21, 'b only too', 2);
                 INSERT INTO orders VALUES (40, 20, 4000, 'b');",
            )
            .unwrap();
        let mut sa = PgStore::track(&a.url, TABLES, StoreOptions::default()).unwrap();
        let mut sb = PgStore::track(&b.url, TABLES, StoreOptions::default()).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        pull(&mut sb, &mut sa).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        let (ca, oa) = (customers(&mut a.client()), orders(&mut a.client()));
        assert_eq!(
            (customers(&mut b.client()), orders(&mut b.client())),
            (ca.clone(), oa.clone())
        );
        assert_eq!((ca.len(), oa.len()), (12, 21));
        assert!(sa.failures().unwrap().is_empty());
        assert!(sb.failures().unwrap().is_empty());
        // Every differing cell is a recorded conflict, on both sides, naming both values.
        let differing: BTreeSet<(String, String, String)> = [6, 7, 8]
            .iter()
            .flat_map(|k| {
                [
                    ("customers", format!("({k})"), "name"),
                    ("customers", format!("({k})"), "score"),
                ]
            })
            .chain([("orders", "(16)".to_owned(), "amount")])
            .map(|(t, k, c)| (t.to_owned(), k, c.to_owned()))
            .collect();
        for store in [&mut sa, &mut sb] {
            let recorded: BTreeSet<(String, String, String)> = store
                .conflicts()
                .unwrap()
                .into_iter()
                .filter(|c| c.local_value != c.remote_value)
                .map(|c| {
                    assert_eq!(c.kind, "column");
                    (c.table, c.key, c.column.unwrap_or_default())
                })
                .collect();
            assert_eq!(recorded, differing);
        }
    }
}
