//! `docs/type-mapping.md` against the code. Risk covered: the page listed MySQL `double`,
//! `float` and `binary(n)` as supported while tracking such a column failed, so a user
//! planned on types Concord refuses. The page now lists which types a node tracks and
//! which it refuses; this test reads both lists from the page, creates a column of each
//! type on a real server, and asks the store's read-only check (what `concord init`
//! runs) about it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestDb;
use concord_mysql::MyStore;

/// The backquoted types of the page's line starting with `- {label}:`.
fn listed(label: &str) -> Vec<String> {
    let page = include_str!("../../../docs/type-mapping.md");
    let line = page
        .lines()
        .find(|l| l.starts_with(&format!("- {label}:")))
        .unwrap_or_else(|| panic!("docs/type-mapping.md has no `- {label}:` line"));
    let types: Vec<String> = line
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!types.is_empty(), "{line}");
    types
}

fn check_column(server: &str, column_type: &str) -> Result<(), String> {
    let db = TestDb::new(
        server,
        &[&format!(
            "CREATE TABLE t(id int PRIMARY KEY, c {column_type} NULL)"
        )],
    );
    MyStore::check(&db.url, &["t"]).map_err(|e| e.to_string())
}

fn every_type_the_page_lists_is_tracked_or_refused_as_it_says(server: &str) {
    for column_type in listed("tracked") {
        check_column(server, &column_type)
            .unwrap_or_else(|e| panic!("the page says {column_type} is tracked, but: {e}"));
    }
    for column_type in listed("refused for now") {
        let err = check_column(server, &column_type)
            .err()
            .unwrap_or_else(|| panic!("the page says {column_type} is refused, but it is tracked"));
        assert!(err.contains("cannot replicate"), "{column_type}: {err}");
    }
}

concord_harness::server_tests! {
    fn the_type_mapping_page_says_which_mariadb_types_are_tracked(server: mysql) {
        every_type_the_page_lists_is_tracked_or_refused_as_it_says(server);
    }
}
