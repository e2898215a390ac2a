//! The store conformance suite: each test written once, run against every kind of store
//! (`<module>::<test>::<kind>`). A kind whose server is not available is reported as
//! ignored, naming the variable to set; a kind a test cannot apply to is reported as
//! ignored with the reason. Run one kind with a name filter, e.g.
//! `cargo test -p concord-conformance --test suite -- ::mariadb`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod suite {
    pub mod concurrency;
    pub mod initial_load;
    pub mod lost_connection;
    pub mod set_apply;
}

use concord_conformance::{Kind, case};
use suite::*;

fn main() -> std::process::ExitCode {
    concord_conformance::run_suite(
        &[
            case!(initial_load::initial_load_under_concurrent_writes_loses_and_duplicates_nothing),
            case!(initial_load::tables_loaded_child_first_from_sqlite_apply_where_foreign_keys_are_enforced),
            case!(initial_load::a_partly_filled_destination_converges_with_the_source),
            case!(concurrency::a_local_write_committing_while_an_apply_waits_for_it_is_captured_before_the_merge),
            case!(concurrency::writes_committed_while_a_restarting_node_tracks_its_table_again_are_all_captured),
            case!(
                lost_connection::a_connection_lost_in_the_middle_of_a_batch_applies_nothing_and_the_store_reconnects,
                &[(Kind::Sqlite, lost_connection::NO_SERVER)]
            ),
            case!(set_apply::a_refused_change_in_a_set_is_named_and_only_its_transaction_is_set_aside),
            case!(set_apply::a_key_written_many_times_in_one_batch_ends_as_row_by_row),
            case!(set_apply::parent_and_child_rows_with_a_foreign_key_apply_in_order),
            case!(set_apply::set_writes_on_a_two_column_key_keep_every_value_exact),
        ],
        Vec::new(),
    )
}
