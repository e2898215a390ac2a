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
    pub mod added_columns;
    pub mod bad_input;
    pub mod concurrency;
    pub mod float_values;
    pub mod initial_load;
    pub mod lost_connection;
    pub mod set_apply;
    pub mod snapshot;
}

use concord_conformance::{Kind, case};
use suite::*;

fn main() -> std::process::ExitCode {
    concord_conformance::run_suite(
        &[
            case!(added_columns::every_kind_added_for_a_peer_keeps_its_values),
            case!(added_columns::a_name_the_table_lacks_is_added_only_once_a_whole_row_names_every_column),
            case!(bad_input::a_change_to_an_unknown_table_is_refused_and_nothing_of_its_batch_is_applied),
            case!(bad_input::a_change_to_an_unknown_column_is_refused_naming_the_column),
            case!(bad_input::a_value_of_the_wrong_type_is_refused_naming_the_column),
            case!(bad_input::a_decimal_the_column_would_round_is_refused_naming_the_column),
            case!(
                bad_input::text_longer_than_the_column_is_refused_not_truncated,
                &[(Kind::Sqlite, bad_input::SQLITE_KEEPS_LONG_TEXT)]
            ),
            case!(bad_input::a_malformed_key_is_refused_and_shown_in_hex),
            case!(bad_input::a_key_with_the_wrong_number_of_components_is_refused),
            case!(bad_input::a_key_component_of_the_wrong_type_is_refused_naming_the_column),
            case!(bad_input::a_delete_carrying_columns_is_refused_but_a_write_whose_columns_were_mapped_away_applies),
            case!(bad_input::a_timestamp_beyond_the_clock_bound_is_refused_and_does_not_move_the_clock),
            case!(bad_input::a_sequence_gap_is_refused),
            case!(bad_input::a_not_null_violation_at_the_destination_is_refused_naming_the_column),
            case!(bad_input::a_check_violation_at_the_destination_is_refused_naming_the_constraint),
            case!(
                bad_input::a_foreign_key_violation_at_the_destination_is_refused_naming_the_constraint,
                &[(Kind::Sqlite, bad_input::SQLITE_APPLIES_WITHOUT_FOREIGN_KEYS)]
            ),
            case!(bad_input::a_batch_ending_inside_a_source_transaction_is_not_applied),
            case!(bad_input::a_duplicate_change_is_skipped_and_counted),
            case!(bad_input::a_resent_part_of_an_already_applied_transaction_is_skipped_without_error),
            case!(bad_input::a_pull_after_a_refused_batch_resumes_where_the_database_left_off),
            case!(bad_input::a_set_aside_transaction_is_recorded_and_the_stream_keeps_flowing),
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
            case!(
                float_values::a_sqlite_real_goes_into_a_decimal_as_its_shortest_decimal_or_is_set_aside,
                &[(Kind::Sqlite, float_values::SQLITE_HAS_NO_DECIMAL)]
            ),
            case!(float_values::a_sqlite_infinity_arrives_exactly_or_is_set_aside_naming_it),
            case!(
                float_values::a_nan_is_set_aside_by_sqlite_and_infinities_arrive_exactly,
                &[
                    (Kind::Sqlite, float_values::ONLY_POSTGRES_HOLDS_NAN),
                    (Kind::Mariadb, float_values::ONLY_POSTGRES_HOLDS_NAN)
                ]
            ),
            case!(set_apply::set_writes_on_a_two_column_key_keep_every_value_exact),
            case!(snapshot::a_replica_behind_retention_catches_up_from_a_snapshot_without_loss_or_resurrection),
            case!(snapshot::a_snapshot_merged_twice_changes_nothing_the_second_time),
        ],
        Vec::new(),
    )
}
