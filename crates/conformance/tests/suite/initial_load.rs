//! Initial load: tracking tables that already hold rows.
//!
//! Risks covered:
//! - tracking a table while other sessions keep inserting, updating and deleting loses
//!   a write (neither in the backfill nor captured) or duplicates one (in both), so a
//!   replica that joins later differs from the source; on PostgreSQL also when the
//!   database's default isolation is `REPEATABLE READ` (MariaDB's default already);
//! - tables named child first (`orders` before `customers`) are backfilled child first,
//!   so a destination enforcing the foreign key (PostgreSQL and MariaDB always do;
//!   Concord's SQLite connection does not, so there `PRAGMA foreign_key_check` on the
//!   replica and the log's order say it) refuses `orders` rows whose customer has not
//!   arrived yet;
//! - the same log applied to a SQLite replica differs from the source;
//! - a destination that already holds some of the same keys (equal or different values)
//!   and rows of its own does not converge with the source, or the differing rows are
//!   not recorded as conflicts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use concord_conformance::{Client, Database, Kind, Row, StoreUnderTest};
use concord_core::{Change, PrimaryKey, Value};
use concord_store::pull;

/// Every store enforces the foreign key for applications; PostgreSQL and MariaDB also
/// on Concord's own sessions.
const SCHEMA: &str = "
CREATE TABLE customers(id {int} PRIMARY KEY, name {text} NOT NULL, score {int} NOT NULL);
CREATE TABLE orders(id {int} PRIMARY KEY, customer_id {int} NOT NULL, amount {int} NOT NULL,
                    note {text}, FOREIGN KEY (customer_id) REFERENCES customers(id));";

/// Tables as given to `track`: the child first, on purpose.
const TABLES: &[&str] = &["orders", "customers"];

/// Both tables as text rows, after checking (SQLite) that no row breaks the foreign key.
fn tables(db: &Database) -> (Vec<Row>, Vec<Row>) {
    if db.kind() == Kind::Sqlite {
        assert_eq!(
            db.number("SELECT count(*) FROM pragma_foreign_key_check"),
            0,
            "{} breaks its foreign key",
            db.name()
        );
    }
    (
        db.rows("SELECT id, name, score FROM customers ORDER BY id"),
        db.rows("SELECT id, customer_id, amount, note FROM orders ORDER BY id"),
    )
}

/// Fills the tables before anything is tracked: `customers` 1..=n, two orders each.
fn prefill(db: &Database, customers: i64) {
    let customer_rows: Vec<String> = (1..=customers)
        .map(|c| format!("({c}, 'customer {c}', 0)"))
        .collect();
    let order_rows: Vec<String> = (1..=2 * customers)
        .map(|o| format!("({o}, {}, {}, NULL)", (o + 1) / 2, o * 100))
        .collect();
    db.execute(&format!(
        "INSERT INTO customers VALUES {}; INSERT INTO orders VALUES {};",
        customer_rows.join(", "),
        order_rows.join(", ")
    ));
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

/// An ordinary client writing on its own connection: inserts of customers with their
/// orders, orders of existing customers, updates, deletes of orders and of customers
/// with their orders (child rows first, in one transaction), key changes.
struct Writer<'a> {
    db: &'a Database,
    client: Client,
    rng: Rng,
    next_customer: i64,
    next_order: i64,
}

impl Writer<'_> {
    fn write_once(&mut self) -> Result<(), concord_conformance::ClientError> {
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
                client.transaction(&[
                    format!("INSERT INTO customers VALUES ({c}, 'customer {c}', 0)"),
                    format!("INSERT INTO orders VALUES ({o}, {c}, {}, 'new')", o * 100),
                ])
            }
            3 | 4 => {
                let o = *next_order;
                *next_order += 1;
                let c = pick(rng, *next_customer);
                client.execute(&format!(
                    "INSERT INTO orders(id, customer_id, amount)
                     SELECT {o}, id, {} FROM customers WHERE id >= {c} ORDER BY id LIMIT 1",
                    o * 10
                ))
            }
            5 => client.execute(&format!(
                "UPDATE customers SET score = score + 1 WHERE id = {}",
                pick(rng, *next_customer)
            )),
            6 => client.execute(&format!(
                "UPDATE orders SET amount = amount + 1, note = 'updated' WHERE id = {}",
                pick(rng, *next_order)
            )),
            7 => client.execute(&format!(
                "DELETE FROM orders WHERE id = {}",
                pick(rng, *next_order)
            )),
            8 => {
                let c = pick(rng, *next_customer);
                client.transaction(&[
                    format!("DELETE FROM orders WHERE customer_id = {c}"),
                    format!("DELETE FROM customers WHERE id = {c}"),
                ])
            }
            _ => {
                let o = *next_order;
                *next_order += 1;
                client.execute(&format!(
                    "UPDATE orders SET id = {o} WHERE id = {}",
                    pick(rng, o - 1)
                ))
            }
        }
    }

    /// Writes until `stop`, counting committed writes in `writes`; returns the errors
    /// seen, by message. A failed transaction is rolled back, as an application would;
    /// after an error other than a deadlock the connection is replaced (MariaDB can
    /// keep failing a statement across a trigger replacement, MDEV-26048, and a closed
    /// PostgreSQL session must be reopened).
    fn run(mut self, stop: &AtomicBool, writes: &AtomicU64) -> BTreeMap<String, u64> {
        let mut errors = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            match self.write_once() {
                Ok(()) => {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    *errors.entry(e.message.clone()).or_default() += 1;
                    if !e.retryable || e.closed {
                        self.client = self.db.client();
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
///   capture both recorded it);
/// - a delete of a row that is not live at that point of the log, or a causal length
///   that skips a life. Every store's capture logs nothing for a delete of a row it has
///   not seen live (a row inserted and deleted between two captures, or within one
///   source transaction), so a delete always ends the life the log last began;
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
            assert!(last % 2 == 1, "delete of a row not live: {c:?}");
            assert_eq!(cl, last + 1, "a delete skipping a life: {c:?}");
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

pub fn initial_load_under_concurrent_writes_loses_and_duplicates_nothing(s: &StoreUnderTest) {
    let source = s.database(&s.sql(SCHEMA));
    const CUSTOMERS: i64 = 300;
    prefill(&source, CUSTOMERS);
    if s.kind() == Kind::Postgres {
        // Sessions opened from now on (Concord's) default to REPEATABLE READ, a setting
        // some databases use; tracking must not depend on the default.
        source.execute(&format!(
            "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
            source.name()
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let (errors, mut src, before, tracked_at) = std::thread::scope(|scope| {
        let writer = Writer {
            db: &source,
            client: source.client(),
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            next_customer: CUSTOMERS + 1,
            next_order: 2 * CUSTOMERS + 1,
        };
        let writer = {
            let (stop, writes) = (stop.clone(), writes.clone());
            scope.spawn(move || writer.run(&stop, &writes))
        };
        wait_for(&writes, 100);
        let before = writes.load(Ordering::Relaxed);
        let mut src = source.track(TABLES);
        let tracked_at = writes.load(Ordering::Relaxed);
        // Keep writing after tracking, with a capture in the middle.
        wait_for(&writes, tracked_at + 100);
        src.capture().unwrap();
        wait_for(&writes, writes.load(Ordering::Relaxed) + 100);
        stop.store(true, Ordering::Relaxed);
        (writer.join().unwrap(), src, before, tracked_at)
    });
    println!(
        "writes: {} committed ({} while tracking); failed: {errors:?}",
        writes.load(Ordering::Relaxed),
        tracked_at - before
    );
    src.capture().unwrap();
    assert_eq!(src.pending_len(), 0);

    let changes = src.all_changes();
    assert_eq!(changes.len() as u64, src.log_len().unwrap());
    let inserted = check_log(&changes);
    println!("log: {} changes, lives begun {inserted:?}", changes.len());
    let expected = tables(&source);
    assert!(!expected.1.is_empty());

    // To a replica of the same kind.
    let dest = s.database(&s.sql(SCHEMA));
    let mut dst = dest.track(TABLES);
    let report = pull(&mut *src, &mut *dst).unwrap();
    assert_eq!(report.applied as usize, changes.len());
    assert!(dst.failures().unwrap().is_empty());
    assert!(src.failures().unwrap().is_empty());
    assert_eq!(tables(&dest), expected);

    // And, from a server, to a SQLite replica.
    if s.kind() != Kind::Sqlite {
        let lite = StoreUnderTest::new(Kind::Sqlite, "");
        let replica = lite.database(&lite.sql(SCHEMA));
        let mut store = replica.track(TABLES);
        let report = pull(&mut *src, &mut *store).unwrap();
        assert_eq!(report.applied as usize, changes.len());
        assert!(store.failures().unwrap().is_empty());
        assert_eq!(tables(&replica), expected);
    }
}

pub fn tables_loaded_child_first_from_sqlite_apply_where_foreign_keys_are_enforced(
    s: &StoreUnderTest,
) {
    let lite = StoreUnderTest::new(Kind::Sqlite, "");
    let source = lite.database(&lite.sql(SCHEMA));
    prefill(&source, 200);
    let mut src = source.track(TABLES);
    check_log(&src.all_changes());
    let dest = s.database(&s.sql(SCHEMA));
    let mut dst = dest.track(TABLES);
    let report = pull(&mut *src, &mut *dst).unwrap();
    assert_eq!(report.applied, 600);
    assert!(dst.failures().unwrap().is_empty());
    assert_eq!(tables(&dest), tables(&source));
}

pub fn a_partly_filled_destination_converges_with_the_source(s: &StoreUnderTest) {
    let (a, b) = (s.database(&s.sql(SCHEMA)), s.database(&s.sql(SCHEMA)));
    prefill(&a, 10);
    // b: customers 1-5 and their orders as in a; 6-8 with other values, order 16 with
    // another amount; customers 20-21 and order 40 of its own.
    prefill(&b, 8);
    b.execute(
        "UPDATE customers SET name = CONCAT('b ', name), score = 7 WHERE id BETWEEN 6 AND 8;
         UPDATE orders SET amount = amount + 1 WHERE id = 16;
         INSERT INTO customers VALUES (20, 'b only', 1), (21, 'b only too', 2);
         INSERT INTO orders VALUES (40, 20, 4000, 'b');",
    );
    let mut sa = a.track(TABLES);
    let mut sb = b.track(TABLES);
    pull(&mut *sa, &mut *sb).unwrap();
    pull(&mut *sb, &mut *sa).unwrap();
    pull(&mut *sa, &mut *sb).unwrap();
    let merged = tables(&a);
    assert_eq!(tables(&b), merged);
    assert_eq!((merged.0.len(), merged.1.len()), (12, 21));
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
