#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Initial load (tracking tables that already hold rows) against a real MariaDB server.
//!
//! Risks covered:
//! - tracking a table while other connections keep inserting, updating and deleting
//!   loses a write (neither in the backfill nor captured by a trigger) or duplicates one
//!   (in both), so a replica that joins later differs from the source;
//! - tables named child first (`orders` before `customers`) are backfilled child first,
//!   so a destination enforcing the foreign key refuses `orders` rows whose customer has
//!   not arrived yet;
//! - a destination that already holds some of the same keys (equal or different values)
//!   and rows of its own does not converge with the source, or the differing rows are
//!   not recorded as conflicts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TestDb, all_changes};
use concord_core::{Change, Value};
use concord_mysql::{MyStore, StoreOptions, pull};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts};

/// This file's reads of a test database.
impl TestDb {
    fn customers(&self) -> Vec<(i64, String, i64)> {
        self.conn()
            .query("SELECT id, name, score FROM customers ORDER BY id")
            .unwrap()
    }

    fn orders(&self) -> Vec<(i64, i64, i64, Option<String>)> {
        self.conn()
            .query("SELECT id, customer_id, amount, note FROM orders ORDER BY id")
            .unwrap()
    }
}

/// InnoDB enforces the foreign key on every connection, Concord's included.
const SCHEMA: &[&str] = &[
    "CREATE TABLE customers(id BIGINT PRIMARY KEY, name VARCHAR(40) NOT NULL,
        score BIGINT NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE orders(id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL,
        amount BIGINT NOT NULL, note VARCHAR(40),
        CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers(id))
        ENGINE=InnoDB",
];

/// Tables as given to `track`: the child first, on purpose.
const TABLES: &[&str] = &["orders", "customers"];

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

/// Fills the tables before anything is tracked: `customers` 1..=n, two orders each.
fn prefill(conn: &mut Conn, customers: i64) {
    conn.query_drop("START TRANSACTION").unwrap();
    for c in 1..=customers {
        conn.exec_drop(
            "INSERT INTO customers VALUES (?, ?, 0)",
            (c, format!("customer {c}")),
        )
        .unwrap();
        for o in [2 * c - 1, 2 * c] {
            conn.exec_drop("INSERT INTO orders VALUES (?, ?, ?, NULL)", (o, c, o * 100))
                .unwrap();
        }
    }
    conn.query_drop("COMMIT").unwrap();
}

/// An ordinary client writing on its own connection: inserts of customers with their
/// orders, orders of existing customers, updates, deletes of orders and of customers
/// with their orders (child rows first, in one transaction), key changes.
struct Writer {
    url: String,
    conn: Conn,
    rng: Rng,
    next_customer: i64,
    next_order: i64,
}

impl Writer {
    fn write_once(&mut self) -> Result<(), mysql::Error> {
        let Writer {
            conn,
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
                conn.query_drop("START TRANSACTION")?;
                conn.exec_drop(
                    "INSERT INTO customers VALUES (?, ?, 0)",
                    (c, format!("customer {c}")),
                )?;
                conn.exec_drop(
                    "INSERT INTO orders VALUES (?, ?, ?, 'new')",
                    (o, c, o * 100),
                )?;
                conn.query_drop("COMMIT")?;
            }
            3 | 4 => {
                let o = *next_order;
                *next_order += 1;
                let c = pick(rng, *next_customer);
                conn.exec_drop(
                    "INSERT INTO orders(id, customer_id, amount)
                     SELECT ?, id, ? FROM customers WHERE id >= ? ORDER BY id LIMIT 1",
                    (o, o * 10, c),
                )?;
            }
            5 => conn.exec_drop(
                "UPDATE customers SET score = score + 1 WHERE id = ?",
                (pick(rng, *next_customer),),
            )?,
            6 => conn.exec_drop(
                "UPDATE orders SET amount = amount + 1, note = 'updated' WHERE id = ?",
                (pick(rng, *next_order),),
            )?,
            7 => conn.exec_drop("DELETE FROM orders WHERE id = ?", (pick(rng, *next_order),))?,
            8 => {
                let c = pick(rng, *next_customer);
                conn.query_drop("START TRANSACTION")?;
                conn.exec_drop("DELETE FROM orders WHERE customer_id = ?", (c,))?;
                conn.exec_drop("DELETE FROM customers WHERE id = ?", (c,))?;
                conn.query_drop("COMMIT")?;
            }
            _ => {
                let o = *next_order;
                *next_order += 1;
                conn.exec_drop(
                    "UPDATE orders SET id = ? WHERE id = ?",
                    (o, pick(rng, o - 1)),
                )?;
            }
        }
        Ok(())
    }

    /// Writes until `stop`, counting committed writes in `writes`; returns the errors
    /// seen, by message. A failed write is rolled back, as an application would; after
    /// an error other than a deadlock the connection is replaced, because MariaDB can
    /// leave a prepared statement failing with "table doesn't exist" when triggers are
    /// created while it runs (MDEV-26048), and a new connection prepares afresh.
    fn run(mut self, stop: &AtomicBool, writes: &AtomicU64) -> BTreeMap<String, u64> {
        let mut errors = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            match self.write_once() {
                Ok(()) => {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let _ = self.conn.query_drop("ROLLBACK");
                    let deadlock = matches!(&e, mysql::Error::MySqlError(s) if s.code == 1213);
                    *errors.entry(e.to_string()).or_default() += 1;
                    if !deadlock {
                        self.conn = Conn::new(Opts::from_url(&self.url).unwrap()).unwrap();
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
fn check_log(changes: &[Change], columns: &BTreeMap<&str, usize>) -> BTreeMap<String, u64> {
    let mut lives = Lives::new();
    let mut inserted = BTreeMap::<String, u64>::new();
    let mut order_customer = BTreeMap::<i64, i64>::new();
    let key_of = |c: &Change| match c.key.decode().unwrap().as_slice() {
        [Value::Integer(i)] => *i,
        other => panic!("unexpected key {other:?}"),
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
        let key = key_of(c);
        let customer_live = |lives: &Lives, customer: i64| {
            let k = concord_core::PrimaryKey::encode(&[Value::Integer(customer)]).unwrap();
            lives
                .get(&("customers".to_owned(), k.as_bytes().to_vec()))
                .is_some_and(|cl| cl % 2 == 1)
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
    fn initial_load_under_concurrent_writes_loses_and_duplicates_nothing(base: mysql) {
        let source = TestDb::new(base, SCHEMA);
        const CUSTOMERS: i64 = 300;
        prefill(&mut source.conn(), CUSTOMERS);

        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            url: source.url.clone(),
            conn: source.conn(),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            next_customer: CUSTOMERS + 1,
            next_order: 2 * CUSTOMERS + 1,
        };
        let writer = {
            let (stop, writes) = (stop.clone(), writes.clone());
            std::thread::spawn(move || writer.run(&stop, &writes))
        };
        wait_for(&writes, 100);
        let before = writes.load(Ordering::Relaxed);
        let mut src = MyStore::track(&source.url, TABLES, StoreOptions::default()).unwrap();
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
        let columns = BTreeMap::from([("customers", 3), ("orders", 4)]);
        let inserted = check_log(&changes, &columns);
        println!("log: {} changes, lives begun {inserted:?}", changes.len());

        let dest = TestDb::new(base, SCHEMA);
        let mut dst = MyStore::track(&dest.url, TABLES, StoreOptions::default()).unwrap();
        let report = pull(&mut src, &mut dst).unwrap();
        assert_eq!(report.applied as usize, changes.len());
        assert!(dst.failures().unwrap().is_empty());
        assert!(src.failures().unwrap().is_empty());
        assert_eq!(dest.customers(), source.customers());
        assert_eq!(dest.orders(), source.orders());
        assert!(!source.orders().is_empty());
    }

    fn a_partly_filled_destination_converges_with_the_source(base: mysql) {
        let (a, b) = (TestDb::new(base, SCHEMA), TestDb::new(base, SCHEMA));
        let mut ca = a.conn();
        prefill(&mut ca, 10);
        let mut cb = b.conn();
        // b: customers 1-5 and their orders as in a; 6-8 with other values; 20-21 and an
        // order of its own.
        prefill(&mut cb, 8);
        cb.query_drop(
            "UPDATE customers SET name = CONCAT('b ', name), score = 7 WHERE id BETWEEN 6 AND 8;
             UPDATE orders SET amount = amount + 1 WHERE id = 16;
             INSERT INTO customers VALUES (20, 'b only', 1), (21, 'b only too', 2);
             INSERT INTO orders VALUES (40, 20, 4000, 'b');",
        )
        .unwrap();
        let mut sa = MyStore::track(&a.url, TABLES, StoreOptions::default()).unwrap();
        let mut sb = MyStore::track(&b.url, TABLES, StoreOptions::default()).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        pull(&mut sb, &mut sa).unwrap();
        pull(&mut sa, &mut sb).unwrap();
        assert_eq!(a.customers(), b.customers());
        assert_eq!(a.orders(), b.orders());
        assert_eq!(a.customers().len(), 12);
        assert_eq!(a.orders().len(), 21);
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
