//! A row the link's mapping cannot convert for a peer, between two real nodes over TLS
//! (the reproduction of issue 10): node `crm` maps its `crm_contacts.contact_id` (text)
//! onto peer `shop`'s integer `customers.id`, and writes a contact whose id is `'abc'`.
//!
//! Risks covered:
//! * the bad row stops `crm`'s outgoing stream to `shop`: later rows never arrive, the
//!   session fails and reconnects in a loop (status counts every failed session in the
//!   peer's `errors`), and a delete of the bad row queues behind it;
//! * the row is withheld from every peer instead of the one whose mapping cannot
//!   convert it (a third node, `mirror`, with crm's own schema must receive it);
//! * the bad row is dropped silently: it must be listed on both ends (`concord
//!   failures` reads the same records), with the peer, table, key and the mapping's
//!   error, and counted in status;
//! * a transaction whose first rows were already sent (it spans batches) when a later
//!   row turns out unconvertible is applied in part at the peer;
//! * a new peer catching up from rows (the log was pruned) never gets past a row whose
//!   state cannot be converted;
//! * once the data or the mapping is fixed, `concord failures retry` does not deliver
//!   the row, or delivers only the columns written since (a partial row); a row that
//!   still cannot be converted is forgotten instead of staying listed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::{Member, assert_no_panics, peer, wait_until};
use concord_node::link_failures::{Direction, LinkFailures};
use concord_node::{Node, NodeConfig, NodeStatus, PeerConfig};

const CRM_DDL: &str =
    "CREATE TABLE crm_contacts(contact_id TEXT NOT NULL PRIMARY KEY, name TEXT, age TEXT)";
const SHOP_DDL: &str = "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, age INTEGER)";

/// `crm`'s mapping onto `shop`: text ids and ages become integers; without `age`, the
/// age is not synced at all (`only_listed`).
fn mapped(mut peer: PeerConfig, age: bool) -> PeerConfig {
    let age = if age {
        r#"{ local = "age", local_type = "text", remote_type = "integer" },"#
    } else {
        ""
    };
    let toml = format!(
        r#"
        name = "x"
        fingerprint = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
        [[tables]]
        local = "crm_contacts"
        remote = "customers"
        key = ["contact_id"]
        only_listed = true
        columns = [
          {{ local = "contact_id", remote = "id", local_type = "text", remote_type = "integer" }},
          {{ local = "name" }},
          {age}
        ]
    "#
    );
    let parsed: PeerConfig = toml::from_str(&toml).unwrap();
    peer.tables = parsed.tables;
    peer
}

fn config(member: &Member, table: &str, peers: Vec<PeerConfig>) -> NodeConfig {
    let mut config = member.config(peers);
    config.store.tables = vec![table.into()];
    config
}

struct Link {
    _root: tempfile::TempDir,
    crm: Member,
    crm_node: Option<Node>,
    shop: Member,
    shop_node: Node,
    /// A second peer of crm with crm's own schema and no mapping: it must receive
    /// everything, the row withheld from the shop too.
    mirror: Member,
    mirror_node: Node,
    /// crm's `batch_changes`, when a test needs small batches.
    crm_batch: Option<usize>,
    /// Whether crm's mapping syncs `age`.
    age: bool,
}

impl Link {
    async fn new() -> Self {
        Self::with_batches(None).await
    }

    async fn with_batches(crm_batch: Option<usize>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let crm = Member::new(root.path(), "crm", CRM_DDL);
        let shop = Member::new(root.path(), "shop", SHOP_DDL);
        let mirror = Member::new(root.path(), "mirror", CRM_DDL);
        let shop_node = shop
            .start_with(config(&shop, "customers", vec![crm.dialing_in()]))
            .await;
        let mirror_node = mirror
            .start_with(config(&mirror, "crm_contacts", vec![crm.dialing_in()]))
            .await;
        let mut link = Self {
            _root: root,
            crm,
            crm_node: None,
            shop,
            shop_node,
            mirror,
            mirror_node,
            crm_batch,
            age: true,
        };
        link.start_crm().await;
        link
    }

    fn crm_config(&self) -> NodeConfig {
        let mut config = config(
            &self.crm,
            "crm_contacts",
            vec![
                mapped(self.shop.at(&self.shop_node), self.age),
                self.mirror.at(&self.mirror_node),
            ],
        );
        if let Some(n) = self.crm_batch {
            config.sync.batch_changes = n;
        }
        config
    }

    async fn start_crm(&mut self) {
        self.crm_node = Some(self.crm.start_with(self.crm_config()).await);
    }

    fn crm_node(&self) -> &Node {
        self.crm_node.as_ref().expect("crm runs")
    }

    async fn stop_crm(&mut self) {
        if let Some(node) = self.crm_node.take() {
            node.shutdown().await;
        }
    }

    async fn statuses(&self) -> (NodeStatus, NodeStatus) {
        (
            self.crm_node().status().await,
            self.shop_node.status().await,
        )
    }
}

fn write(db: &Path, sql: &str) {
    common::app(db).execute_batch(sql).unwrap();
}

/// Writes `sql` at crm and waits until crm captured it, so that each write is a source
/// transaction of its own (a SQLite file's writes captured together form one).
async fn crm_writes(link: &Link, sql: &str) {
    let before = link.crm_node().status().await.captured;
    write(link.crm.db(), sql);
    wait_until("crm to capture its write", async || {
        let now = link.crm_node().status().await.captured;
        if now > before {
            Ok(())
        } else {
            Err(format!("captured {now}"))
        }
    })
    .await;
}

/// `customers` at the shop: (id, name, age).
fn customers(db: &Path) -> Vec<(i64, Option<String>, Option<i64>)> {
    let conn = common::app(db);
    let mut stmt = conn
        .prepare("SELECT id, name, age FROM customers ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits until the shop's `customers` are `expected`; says what both ends' status
/// said of the link otherwise.
async fn wait_for_customers(
    what: &str,
    link: &Link,
    expected: &[(i64, Option<String>, Option<i64>)],
) {
    wait_until(what, async || {
        let now = customers(link.shop.db());
        if now == expected {
            return Ok(());
        }
        let (crm, shop) = link.statuses().await;
        Err(format!(
            "{now:?}; crm's view of the shop: {:?}; the shop's view of crm: {:?}",
            peer(&crm, "shop"),
            peer(&shop, "crm")
        ))
    })
    .await;
}

/// `crm_contacts` at `db`: (contact_id, name, age).
fn contacts(db: &Path) -> Vec<(String, Option<String>, Option<String>)> {
    let conn = common::app(db);
    let mut stmt = conn
        .prepare("SELECT contact_id, name, age FROM crm_contacts ORDER BY contact_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn text(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[test]
fn a_row_the_mapping_cannot_convert_is_withheld_and_the_rows_after_it_arrive() {
    common::run(async {
        let link = Link::new().await;
        crm_writes(
            &link,
            "INSERT INTO crm_contacts VALUES ('abc', 'Bad Id', '40')",
        )
        .await;
        crm_writes(
            &link,
            "INSERT INTO crm_contacts VALUES ('42', 'Ann Lee', '31')",
        )
        .await;
        wait_for_customers(
            "the good row after the bad one at the shop",
            &link,
            &[(42, text("Ann Lee"), Some(31))],
        )
        .await;

        // Only the shop's link withholds it: the mirror, with no mapping, has it.
        wait_until("every row of crm at the mirror", async || {
            let (here, there) = (contacts(link.crm.db()), contacts(link.mirror.db()));
            if here == there && here.len() == 2 {
                Ok(())
            } else {
                Err(format!("crm {here:?}, mirror {there:?}"))
            }
        })
        .await;

        // Listed on both ends, once each, naming the peer, the table, the key and why.
        let sent = LinkFailures::at(&link.crm.dir).load().unwrap();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].direction, Direction::Outgoing);
        assert_eq!(sent[0].peer, "shop");
        assert_eq!(sent[0].first_seq, sent[0].last_seq);
        assert_eq!(sent[0].rows.len(), 1, "{sent:?}");
        assert_eq!(sent[0].rows[0].table, "crm_contacts");
        assert!(sent[0].rows[0].key_text.contains("abc"), "{sent:?}");
        assert!(
            sent[0].reason.starts_with("outgoing to peer shop: ")
                && sent[0].reason.contains("abc")
                && sent[0].reason.contains("integer"),
            "{sent:?}"
        );
        wait_until("the shop to list the withheld range", async || {
            let got = LinkFailures::at(&link.shop.dir).load().unwrap();
            match got.as_slice() {
                [one]
                    if one.direction == Direction::Withheld
                        && one.peer == "crm"
                        && one.first_seq == sent[0].first_seq
                        && one.origin == sent[0].origin
                        && one.reason.starts_with("withheld by peer crm: ")
                        && one.reason.contains("abc") =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;

        // Status: one clear failure on each end, and no session failed (no reconnect
        // loop); both stay connected.
        let (crm, shop) = link.statuses().await;
        let to_shop = peer(&crm, "shop");
        assert_eq!(to_shop.state, "connected", "{to_shop:?}");
        assert_eq!(to_shop.errors, 0, "the session failed: {to_shop:?}");
        assert_eq!(to_shop.last_error, None, "{to_shop:?}");
        assert_eq!(to_shop.failures, 1, "{to_shop:?}");
        assert_eq!(to_shop.set_aside, 1, "{to_shop:?}");
        assert!(
            to_shop
                .last_failure
                .as_deref()
                .is_some_and(|f| f.contains("abc")),
            "{to_shop:?}"
        );
        assert_eq!(crm.failures, 1, "{crm:?}");
        let from_crm = peer(&shop, "crm");
        assert_eq!(from_crm.errors, 0, "{from_crm:?}");
        assert_eq!(from_crm.failures, 1, "{from_crm:?}");
        assert_eq!(shop.failures, 1, "{shop:?}");
        // The shop counts the withheld range as held: its vector matches crm's.
        assert_eq!(common::holds(&shop), common::holds(&crm));

        // Deleting the bad row does not queue behind it: the delete cannot be
        // converted either (its key is 'abc') and is withheld in turn, and what comes
        // after it arrives.
        crm_writes(&link, "DELETE FROM crm_contacts WHERE contact_id = 'abc'").await;
        crm_writes(
            &link,
            "INSERT INTO crm_contacts VALUES ('43', 'Bo Chan', '52')",
        )
        .await;
        wait_for_customers(
            "the row after the delete of the bad row at the shop",
            &link,
            &[
                (42, text("Ann Lee"), Some(31)),
                (43, text("Bo Chan"), Some(52)),
            ],
        )
        .await;
        let (crm, shop) = link.statuses().await;
        assert_eq!(peer(&crm, "shop").errors, 0, "{crm:?}");
        assert_eq!(peer(&shop, "crm").errors, 0, "{shop:?}");
        assert_eq!(LinkFailures::at(&link.crm.dir).load().unwrap().len(), 2);

        // The other direction is unaffected.
        write(
            link.shop.db(),
            "INSERT INTO customers VALUES (7, 'From Shop', 20)",
        );
        wait_until("the shop's row at crm", async || {
            let n: i64 = common::app(link.crm.db())
                .query_row(
                    "SELECT count(*) FROM crm_contacts WHERE contact_id = '7' AND age = '20'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            if n == 1 {
                Ok(())
            } else {
                Err("not yet".into())
            }
        })
        .await;
        assert_no_panics();
        let mirror = link.mirror_node.status().await;
        assert_eq!(mirror.failures, 0, "{mirror:?}");
        assert_eq!(peer(&mirror, "crm").errors, 0, "{mirror:?}");
        let Link {
            crm_node,
            shop_node,
            mirror_node,
            ..
        } = link;
        crm_node.unwrap().shutdown().await;
        shop_node.shutdown().await;
        mirror_node.shutdown().await;
    });
}

#[test]
fn retry_after_the_data_is_fixed_delivers_the_whole_withheld_row() {
    common::run(async {
        let mut link = Link::new().await;
        crm_writes(
            &link,
            "INSERT INTO crm_contacts VALUES ('1', 'Ann Lee', 'thirty')",
        )
        .await;
        crm_writes(
            &link,
            "INSERT INTO crm_contacts VALUES ('2', 'Bo Chan', '52')",
        )
        .await;
        wait_for_customers(
            "the good row at the shop",
            &link,
            &[(2, text("Bo Chan"), Some(52))],
        )
        .await;

        // Fixing the data sends only the column written: the shop would hold a row
        // without its name. The retry sends the whole row as it is now.
        crm_writes(
            &link,
            "UPDATE crm_contacts SET age = '30' WHERE contact_id = '1'",
        )
        .await;
        wait_for_customers(
            "the fixed column at the shop",
            &link,
            &[(1, None, Some(30)), (2, text("Bo Chan"), Some(52))],
        )
        .await;

        // A retry of a row that still cannot be converted keeps it listed, with the
        // reason found now.
        crm_writes(&link, "INSERT INTO crm_contacts VALUES ('3', 'Cy', 'old')").await;
        wait_until("the second bad row to be withheld", async || {
            let n = LinkFailures::at(&link.crm.dir).load().unwrap().len();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} entries"))
            }
        })
        .await;
        crm_writes(
            &link,
            "UPDATE crm_contacts SET age = 'older' WHERE contact_id = '3'",
        )
        .await;
        wait_until("the third bad write to be withheld", async || {
            let n = LinkFailures::at(&link.crm.dir).load().unwrap().len();
            if n == 3 {
                Ok(())
            } else {
                Err(format!("{n} entries"))
            }
        })
        .await;

        link.stop_crm().await;
        let marked = LinkFailures::at(&link.crm.dir).request_retry(None).unwrap();
        assert_eq!(marked, 3);
        link.start_crm().await;
        wait_for_customers(
            "the whole fixed row at the shop after the retry",
            &link,
            &[
                (1, text("Ann Lee"), Some(30)),
                (2, text("Bo Chan"), Some(52)),
            ],
        )
        .await;
        wait_until("the delivered entry to be forgotten", async || {
            let left = LinkFailures::at(&link.crm.dir).load().unwrap();
            let all_for_3 = left.iter().all(|e| {
                e.rows.iter().all(|r| r.key_text.contains('3'))
                    && !e.retry
                    && e.reason.contains("older")
            });
            if left.len() == 2 && all_for_3 {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
        let (crm, shop) = link.statuses().await;
        assert_eq!(peer(&crm, "shop").errors, 0, "{crm:?}");
        assert_eq!(peer(&shop, "crm").errors, 0, "{shop:?}");
        assert_no_panics();
        link.stop_crm().await;
        link.shop_node.shutdown().await;
        link.mirror_node.shutdown().await;
    });
}

#[test]
fn a_transaction_withheld_after_part_of_it_was_sent_is_dropped_whole_at_the_peer() {
    common::run(async {
        // One change per batch: the transaction's first two rows are sent before its
        // third turns out to be unconvertible.
        let link = Link::with_batches(Some(1)).await;
        crm_writes(
            &link,
            "BEGIN; INSERT INTO crm_contacts VALUES ('10', 'A', '1'); \
             INSERT INTO crm_contacts VALUES ('11', 'B', '2'); \
             INSERT INTO crm_contacts VALUES ('12', 'C', 'three'); COMMIT",
        )
        .await;
        crm_writes(&link, "INSERT INTO crm_contacts VALUES ('13', 'D', '4')").await;
        wait_for_customers(
            "only the row after the withheld transaction at the shop",
            &link,
            &[(13, text("D"), Some(4))],
        )
        .await;
        let sent = LinkFailures::at(&link.crm.dir).load().unwrap();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!((sent[0].first_seq, sent[0].last_seq), (1, 3), "{sent:?}");
        assert_eq!(
            sent[0].rows.len(),
            3,
            "every row of the transaction: {sent:?}"
        );
        wait_until("the shop to list the whole transaction", async || {
            let got = LinkFailures::at(&link.shop.dir).load().unwrap();
            match got.as_slice() {
                [one] if (one.first_seq, one.last_seq) == (1, 3) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let (crm, shop) = link.statuses().await;
        assert_eq!(peer(&crm, "shop").errors, 0, "{crm:?}");
        assert_eq!(peer(&shop, "crm").errors, 0, "{shop:?}");
        assert_eq!(peer(&shop, "crm").set_aside, 3, "{shop:?}");
        // The first two rows did travel (then were dropped), and the row after.
        assert_eq!(peer(&shop, "crm").received, 3, "{shop:?}");
        assert_no_panics();
        let Link {
            crm_node,
            shop_node,
            mirror_node,
            ..
        } = link;
        crm_node.unwrap().shutdown().await;
        shop_node.shutdown().await;
        mirror_node.shutdown().await;
    });
}

#[test]
fn retry_after_the_mapping_is_fixed_delivers_the_withheld_row() {
    common::run(async {
        let mut link = Link::new().await;
        crm_writes(&link, "INSERT INTO crm_contacts VALUES ('5', 'Eve', 'n/a')").await;
        crm_writes(&link, "INSERT INTO crm_contacts VALUES ('6', 'Fay', '6')").await;
        wait_for_customers(
            "the good row at the shop",
            &link,
            &[(6, text("Fay"), Some(6))],
        )
        .await;
        assert_eq!(LinkFailures::at(&link.crm.dir).load().unwrap().len(), 1);

        // The fix is in the mapping: the shop no longer receives ages.
        link.stop_crm().await;
        link.age = false;
        assert_eq!(
            LinkFailures::at(&link.crm.dir).request_retry(None).unwrap(),
            1
        );
        link.start_crm().await;
        wait_for_customers(
            "the withheld row at the shop, without the age the mapping no longer sends",
            &link,
            &[(5, text("Eve"), None), (6, text("Fay"), Some(6))],
        )
        .await;
        wait_until("the delivered entry to be forgotten", async || {
            let left = LinkFailures::at(&link.crm.dir).load().unwrap();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        })
        .await;
        assert_no_panics();
        link.stop_crm().await;
        link.shop_node.shutdown().await;
        link.mirror_node.shutdown().await;
    });
}

#[test]
fn a_row_state_the_mapping_cannot_convert_is_left_out_of_a_reconciliation_and_listed() {
    common::run(async {
        let root = tempfile::tempdir().unwrap();
        let crm = Member::new(root.path(), "crm", CRM_DDL);
        let shop = Member::new(root.path(), "shop", SHOP_DDL);
        // crm keeps 5 log entries: the shop, joining later, catches up from its rows.
        let mut crm_config = config(&crm, "crm_contacts", vec![mapped(shop.dialing_in(), true)]);
        crm_config.sync.retention_changes = 5;
        let crm_node = crm.start_with(crm_config).await;
        let writer = common::app(crm.db());
        writer
            .execute("INSERT INTO crm_contacts VALUES ('abc', 'Bad Id', '1')", [])
            .unwrap();
        crm_node.capture_now().await.unwrap();
        for id in 1..=10 {
            writer
                .execute(
                    "INSERT INTO crm_contacts VALUES (?1, 'n', ?1)",
                    [id.to_string()],
                )
                .unwrap();
            crm_node.capture_now().await.unwrap();
        }
        common::eventually("crm's log to be pruned", async || {
            crm_node.status().await.log_entries <= 5
        })
        .await;

        let shop_node = shop
            .start_with(config(&shop, "customers", vec![crm.at(&crm_node)]))
            .await;
        let expected: Vec<_> = (1..=10).map(|id| (id, text("n"), Some(id))).collect();
        wait_until("every convertible row at the shop", async || {
            let now = customers(shop.db());
            if now == expected {
                Ok(())
            } else {
                let status = crm_node.status().await;
                Err(format!("{now:?}; {:?}", peer(&status, "shop")))
            }
        })
        .await;
        let sent = LinkFailures::at(&crm.dir).load().unwrap();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(
            (sent[0].first_seq, sent[0].direction),
            (0, Direction::Outgoing)
        );
        assert_eq!(sent[0].rows[0].key_text, "('abc')", "{sent:?}");
        let status = crm_node.status().await;
        let to_shop = peer(&status, "shop");
        assert!(to_shop.snapshot_rows_sent >= 10, "{to_shop:?}");
        assert_eq!(
            (to_shop.state.as_str(), to_shop.errors, to_shop.failures),
            ("connected", 0, 1),
            "{to_shop:?}"
        );
        // The shop holds what crm's rows reflect, the bad row's change included.
        assert_eq!(
            common::holds(&shop_node.status().await),
            common::holds(&status)
        );
        assert_no_panics();
        crm_node.shutdown().await;
        shop_node.shutdown().await;
    });
}
