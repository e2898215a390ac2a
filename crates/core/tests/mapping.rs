#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! Per-link schema mapping, through the public API the node uses: each test is named
//! after the way a mapping could corrupt or lose data if it got the rule wrong.
//!
//! The running example is the link between a PostgreSQL node's
//! `customers(id uuid, full_name text, email text, balance numeric(12,2), updated_at
//! timestamptz)` and a MySQL peer's `crm_contacts(contact_id char(36), name varchar(200),
//! email varchar(320), balance decimal(12,2))`.

use concord_core::mapping::{
    ColumnMapping, DefaultValue, Direction, Kind, LinkMapping, MappingError, RealToDecimalError,
    TableMapping, real_to_decimal_column,
};
use concord_core::{CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Value, Version};
use proptest::prelude::*;

const ID: [u8; 16] = [
    0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0x00,
];
const ID_TEXT: &str = "123e4567-e89b-12d3-a456-426614174000";
/// 2024-01-02T03:04:05.678Z
const MILLIS: u64 = 1_704_164_645_678;

fn column(local: &str) -> ColumnMapping {
    ColumnMapping {
        local: local.into(),
        remote: None,
        local_type: None,
        remote_type: None,
        default: None,
    }
}

fn customers() -> TableMapping {
    TableMapping {
        local: "customers".into(),
        remote: "crm_contacts".into(),
        key: vec!["id".into()],
        only_listed: true,
        columns: vec![
            ColumnMapping {
                remote: Some("contact_id".into()),
                local_type: Some(Kind::Uuid),
                remote_type: Some(Kind::Text),
                ..column("id")
            },
            ColumnMapping {
                remote: Some("name".into()),
                ..column("full_name")
            },
            column("email"),
            column("balance"),
            ColumnMapping {
                local_type: Some(Kind::Timestamp),
                default: Some(DefaultValue::ChangeTime),
                ..column("updated_at")
            },
        ],
    }
}

fn link() -> LinkMapping {
    let link = LinkMapping {
        tables: vec![customers()],
    };
    link.validate().unwrap();
    link
}

fn version(node: u8) -> Version {
    Version {
        hlc: Hlc::new(MILLIS, 0),
        origin: NodeId::from_bytes([node; 16]),
    }
}

fn change(table: &str, key: Value, columns: &[(&str, Value)], replaced: Option<Version>) -> Change {
    let v = version(7);
    Change {
        origin: v.origin,
        seq: 42,
        hlc: v.hlc,
        table: table.into(),
        key: PrimaryKey::encode(&[key]).unwrap(),
        causal_length: CausalLength(1),
        columns: columns
            .iter()
            .map(|(name, value)| ColumnChange {
                column: (*name).into(),
                value: value.clone(),
                version: v,
                replaced,
            })
            .collect(),
        delete_seen: None,
        last_in_txn: true,
    }
}

fn local_row(id: [u8; 16], name: &str, balance: &str) -> Change {
    change(
        "customers",
        Value::Uuid(id),
        &[
            ("id", Value::Uuid(id)),
            ("full_name", Value::Text(name.into())),
            ("email", Value::Text("ada@example.com".into())),
            ("balance", Value::Decimal(balance.into())),
            ("updated_at", Value::Timestamp(1_704_164_645_123_456)),
        ],
        None,
    )
}

fn remote_row(id: &str, replaced: Option<Version>) -> Change {
    change(
        "crm_contacts",
        Value::Text(id.into()),
        &[
            ("contact_id", Value::Text(id.into())),
            ("name", Value::Text("Ada".into())),
            ("email", Value::Text("ada@example.com".into())),
            ("balance", Value::Decimal("12.50".into())),
        ],
        replaced,
    )
}

fn names(change: &Change) -> Vec<&str> {
    change.columns.iter().map(|c| c.column.as_str()).collect()
}

fn value<'a>(change: &'a Change, name: &str) -> &'a Value {
    &change
        .columns
        .iter()
        .find(|c| c.column == name)
        .unwrap()
        .value
}

#[test]
fn outgoing_customers_become_crm_contacts_with_a_text_key_and_no_updated_at() {
    let out = link().outgoing(local_row(ID, "Ada", "12.50")).unwrap();
    assert_eq!(out.table, "crm_contacts");
    assert_eq!(
        out.key,
        PrimaryKey::encode(&[Value::Text(ID_TEXT.into())]).unwrap()
    );
    assert_eq!(names(&out), ["contact_id", "name", "email", "balance"]);
    assert_eq!(value(&out, "contact_id"), &Value::Text(ID_TEXT.into()));
    assert_eq!(value(&out, "balance"), &Value::Decimal("12.50".into()));
}

#[test]
fn incoming_crm_contact_insert_gets_the_uuid_key_and_updated_at_from_the_change_time() {
    let upper = ID_TEXT.to_uppercase();
    let inc = link().incoming(remote_row(&upper, None)).unwrap();
    assert_eq!(inc.table, "customers");
    assert_eq!(inc.key, PrimaryKey::encode(&[Value::Uuid(ID)]).unwrap());
    assert_eq!(
        names(&inc),
        ["id", "full_name", "email", "balance", "updated_at"]
    );
    assert_eq!(value(&inc, "id"), &Value::Uuid(ID));
    assert_eq!(
        value(&inc, "updated_at"),
        &Value::Timestamp(MILLIS as i64 * 1000)
    );
    let default = inc.columns.last().unwrap();
    assert_eq!(
        default.version,
        version(7),
        "the default is written by the change itself"
    );
    assert_eq!(default.replaced, None);
}

#[test]
fn incoming_update_gets_no_default_so_it_cannot_overwrite_updated_at() {
    let update = remote_row(ID_TEXT, Some(version(3)));
    let inc = link().incoming(update).unwrap();
    assert_eq!(names(&inc), ["id", "full_name", "email", "balance"]);

    // A partial write is not an insert either, even with nothing replaced.
    let partial = change(
        "crm_contacts",
        Value::Text(ID_TEXT.into()),
        &[("name", Value::Text("Ada L.".into()))],
        None,
    );
    assert_eq!(names(&link().incoming(partial).unwrap()), ["full_name"]);
}

#[test]
fn round_trip_restores_every_mapped_column_both_ways() {
    let link = link();
    let local = local_row(ID, "Ada", "12.50");
    let back = link
        .incoming(link.outgoing(local.clone()).unwrap())
        .unwrap();
    // updated_at is not synced: it comes back as the default, every other field as sent.
    let mut expected = local.clone();
    expected.columns.last_mut().unwrap().value = Value::Timestamp(MILLIS as i64 * 1000);
    assert_eq!(back, expected);

    let remote = remote_row(ID_TEXT, Some(version(3)));
    let back = link
        .outgoing(link.incoming(remote.clone()).unwrap())
        .unwrap();
    assert_eq!(back, remote);
}

proptest! {
    #[test]
    fn round_trip_is_identity_for_any_customer(
        id in any::<[u8; 16]>(),
        name in ".{0,20}",
        balance in "-?(0|[1-9][0-9]{0,9})\\.[0-9]{2}",
        replaced in any::<bool>(),
    ) {
        prop_assume!(balance != "-0.00");
        let link = link();
        let mut local = local_row(id, &name, &balance);
        // An update (something replaced) carries no default back, so it round-trips whole
        // once updated_at is left out.
        local.columns.pop();
        if replaced {
            for c in &mut local.columns {
                c.replaced = Some(version(3));
            }
        }
        let back = link.incoming(link.outgoing(local.clone()).unwrap()).unwrap();
        if replaced {
            prop_assert_eq!(back, local);
        } else {
            prop_assert_eq!(&back.columns[..4], &local.columns[..]);
            prop_assert_eq!(back.columns.len(), 5);
        }
    }
}

#[test]
fn lossy_cast_is_refused_naming_table_key_and_column() {
    let err = link().incoming(remote_row("not-a-uuid", None)).unwrap_err();
    match &err {
        MappingError::Cast {
            direction,
            table,
            key,
            column,
            in_key,
            source,
        } => {
            assert_eq!(*direction, Direction::Incoming);
            assert_eq!(table, "crm_contacts");
            assert_eq!(key, "('not-a-uuid')");
            assert_eq!(column, "contact_id");
            assert!(*in_key, "the key is cast first");
            assert_eq!((source.found, source.to), (Kind::Text, Kind::Uuid));
        }
        other => panic!("unexpected {other:?}"),
    }
    let message = err.to_string();
    for part in ["crm_contacts", "'not-a-uuid'", "contact_id", "text", "uuid"] {
        assert!(message.contains(part), "{message} lacks {part}");
    }

    // A value, not only a key: a balance the real column cannot hold exactly.
    let mut table = customers();
    table.columns[3].local_type = Some(Kind::Decimal);
    table.columns[3].remote_type = Some(Kind::Real);
    let link = LinkMapping {
        tables: vec![table],
    };
    link.validate().unwrap();
    let err = link.outgoing(local_row(ID, "Ada", "0.10")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("outgoing change of table customers")
            && message.contains("column balance")
            && message.contains("decimal value to real")
            && message.contains("exactly"),
        "{message}"
    );
    assert!(link.outgoing(local_row(ID, "Ada", "12.50")).is_ok());
}

#[test]
fn unlisted_tables_pass_through_untouched_both_ways() {
    let link = link();
    let orders = change(
        "orders",
        Value::Integer(1),
        &[("total", Value::Decimal("9.99".into()))],
        None,
    );
    assert_eq!(link.incoming(orders.clone()).unwrap(), orders);
    assert_eq!(link.outgoing(orders.clone()).unwrap(), orders);
    assert_eq!(
        LinkMapping::default().incoming(orders.clone()).unwrap(),
        orders
    );
}

#[test]
fn unlisted_table_under_a_mapped_name_is_refused_rather_than_mixed_in() {
    let link = link();
    let remote_customers = change("customers", Value::Integer(1), &[], None);
    assert!(matches!(
        link.incoming(remote_customers),
        Err(MappingError::TableCollision { .. })
    ));
    let local_crm = change("crm_contacts", Value::Integer(1), &[], None);
    assert!(matches!(
        link.outgoing(local_crm),
        Err(MappingError::TableCollision { .. })
    ));
}

#[test]
fn subset_drops_unlisted_columns_both_ways() {
    let link = link();
    let mut local = local_row(ID, "Ada", "12.50");
    local.columns.push(ColumnChange {
        column: "internal_notes".into(),
        value: Value::Text("secret".into()),
        version: version(7),
        replaced: None,
    });
    let out = link.outgoing(local).unwrap();
    assert!(!names(&out).contains(&"internal_notes"));

    let mut remote = remote_row(ID_TEXT, Some(version(3)));
    remote.columns.push(ColumnChange {
        column: "crm_score".into(),
        value: Value::Integer(5),
        version: version(7),
        replaced: Some(version(3)),
    });
    let inc = link.incoming(remote).unwrap();
    assert_eq!(names(&inc), ["id", "full_name", "email", "balance"]);
}

#[test]
fn without_only_listed_unlisted_columns_pass_under_their_own_name() {
    let mut table = customers();
    table.only_listed = false;
    let link = LinkMapping {
        tables: vec![table],
    };
    link.validate().unwrap();
    let mut remote = remote_row(ID_TEXT, Some(version(3)));
    remote.columns.push(ColumnChange {
        column: "phone".into(),
        value: Value::Text("555".into()),
        version: version(7),
        replaced: Some(version(3)),
    });
    let inc = link.incoming(remote).unwrap();
    assert_eq!(
        names(&inc),
        ["id", "full_name", "email", "balance", "phone"]
    );

    // But not under a name the mapping gives another column: that would write the
    // remote's `full_name` over the local column fed by `name`.
    let clash = change(
        "crm_contacts",
        Value::Text(ID_TEXT.into()),
        &[("full_name", Value::Text("x".into()))],
        Some(version(3)),
    );
    let err = link.incoming(clash).unwrap_err();
    assert!(
        matches!(&err, MappingError::ColumnCollision { column, .. } if column == "full_name"),
        "{err}"
    );
    // Nor a column the mapping says the remote lacks.
    let clash = change(
        "crm_contacts",
        Value::Text(ID_TEXT.into()),
        &[("updated_at", Value::Text("x".into()))],
        Some(version(3)),
    );
    assert!(link.incoming(clash).is_err());
}

#[test]
fn change_with_every_column_dropped_keeps_origin_seq_and_last_in_txn() {
    let link = link();
    let remote = change(
        "crm_contacts",
        Value::Text(ID_TEXT.into()),
        &[("crm_score", Value::Integer(5))],
        Some(version(3)),
    );
    let inc = link.incoming(remote.clone()).unwrap();
    assert!(inc.columns.is_empty());
    assert_eq!(
        (
            inc.origin,
            inc.seq,
            inc.hlc,
            inc.causal_length,
            inc.last_in_txn
        ),
        (
            remote.origin,
            remote.seq,
            remote.hlc,
            remote.causal_length,
            remote.last_in_txn
        )
    );
    assert_eq!(inc.table, "customers");
    assert_eq!(inc.key, PrimaryKey::encode(&[Value::Uuid(ID)]).unwrap());
}

#[test]
fn delete_casts_the_key_and_keeps_delete_seen() {
    let link = link();
    let mut delete = change("customers", Value::Uuid(ID), &[], None);
    delete.causal_length = CausalLength(2);
    delete.delete_seen = Some(version(3));
    let out = link.outgoing(delete.clone()).unwrap();
    assert_eq!(
        out.key,
        PrimaryKey::encode(&[Value::Text(ID_TEXT.into())]).unwrap()
    );
    assert!(out.columns.is_empty() && out.is_delete());
    assert_eq!(out.delete_seen, Some(version(3)));
    // A remote delete gets no default either.
    assert_eq!(link.incoming(out).unwrap(), delete);
}

#[test]
fn composite_key_casts_only_the_cast_component() {
    let table = TableMapping {
        local: "lines".into(),
        remote: "order_lines".into(),
        key: vec!["order_id".into(), "line".into()],
        only_listed: false,
        columns: vec![ColumnMapping {
            local_type: Some(Kind::Uuid),
            remote_type: Some(Kind::Text),
            ..column("order_id")
        }],
    };
    let link = LinkMapping {
        tables: vec![table],
    };
    link.validate().unwrap();
    let mut remote = change("order_lines", Value::Null, &[], None);
    remote.key = PrimaryKey::encode(&[Value::Text(ID_TEXT.into()), Value::Integer(3)]).unwrap();
    let inc = link.incoming(remote.clone()).unwrap();
    assert_eq!(
        inc.key,
        PrimaryKey::encode(&[Value::Uuid(ID), Value::Integer(3)]).unwrap()
    );
    assert_eq!(link.outgoing(inc).unwrap().key, remote.key);

    // A key of another arity means the mapping's `key` is wrong: refuse, never guess.
    remote.key = PrimaryKey::encode(&[Value::Text(ID_TEXT.into())]).unwrap();
    assert!(matches!(
        link.incoming(remote),
        Err(MappingError::KeyArity {
            expected: 2,
            found: 1,
            ..
        })
    ));
}

fn invalid(tables: Vec<TableMapping>) -> String {
    LinkMapping { tables }
        .validate()
        .expect_err("the mapping must be refused")
        .to_string()
}

#[test]
fn validate_refuses_duplicate_table_names_on_either_side() {
    let message = invalid(vec![customers(), customers()]);
    assert!(
        message.contains("customers") && message.contains("twice"),
        "{message}"
    );
    let other = TableMapping {
        local: "contacts".into(),
        ..customers()
    };
    let message = invalid(vec![customers(), other]);
    assert!(message.contains("remote table crm_contacts"), "{message}");
}

#[test]
fn validate_refuses_duplicate_column_names_on_either_side() {
    let mut table = customers();
    table.columns.push(column("email"));
    let message = invalid(vec![table]);
    assert!(
        message.contains("column email") && message.contains("twice"),
        "{message}"
    );

    let mut table = customers();
    table.columns.push(ColumnMapping {
        remote: Some("name".into()),
        ..column("nickname")
    });
    let message = invalid(vec![table]);
    assert!(message.contains("remote column name"), "{message}");
}

#[test]
fn validate_refuses_casts_the_rules_cannot_do() {
    let mut table = customers();
    table.columns[3].local_type = Some(Kind::Decimal);
    table.columns[3].remote_type = Some(Kind::Timestamp);
    let message = invalid(vec![table]);
    assert!(
        message.contains("column balance") && message.contains("no exact cast"),
        "{message}"
    );

    let mut table = customers();
    table.columns[3].local_type = Some(Kind::Decimal);
    let message = invalid(vec![table]);
    assert!(
        message.contains("both local_type and remote_type"),
        "{message}"
    );
}

#[test]
fn validate_refuses_a_default_of_another_kind_than_local_type() {
    let mut table = customers();
    table.columns[4].default = Some(DefaultValue::Text("yesterday".into()));
    let message = invalid(vec![table]);
    assert!(
        message.contains("column updated_at") && message.contains("default"),
        "{message}"
    );
    let mut table = customers();
    table.columns[4].default = Some(DefaultValue::Bool(true));
    invalid(vec![table]);

    // Text that parses as the declared kind is fine, and so is NULL.
    for ok in [
        DefaultValue::Text("1970-01-01T00:00:00Z".into()),
        DefaultValue::Null,
    ] {
        let mut table = customers();
        table.columns[4].default = Some(ok);
        LinkMapping {
            tables: vec![table],
        }
        .validate()
        .unwrap();
    }
}

#[test]
fn validate_requires_the_key_when_a_column_is_cast() {
    let mut table = customers();
    table.key.clear();
    let message = invalid(vec![table]);
    assert!(message.contains("`key`"), "{message}");

    let mut table = customers();
    table.key = vec!["updated_at".into()];
    let message = invalid(vec![table]);
    assert!(message.contains("key column"), "{message}");

    let mut table = customers();
    table.key = vec!["id".into(), "region".into()];
    let message = invalid(vec![table]);
    assert!(message.contains("column region"), "{message}");
}

#[test]
fn validate_refuses_a_default_on_a_column_the_remote_has() {
    let mut table = customers();
    table.columns[4].remote = Some("modified".into());
    let message = invalid(vec![table]);
    assert!(
        message.contains("remove `remote` or `default`"),
        "{message}"
    );
}

// A float written into a decimal column (a SQLite REAL bound for MariaDB's DECIMAL(10,2)
// or PostgreSQL's numeric(10,2)) goes through its shortest decimal.

#[test]
fn a_real_the_decimal_column_holds_is_written_as_its_shortest_decimal() {
    let cents = |r: f64| real_to_decimal_column(r, Some(10), Some(2));
    assert_eq!(cents(2.25).as_deref(), Ok("2.25"));
    // 0.1 is not exactly a float, but "0.1" is the decimal that reads back as this float.
    assert_eq!(cents(0.1).as_deref(), Ok("0.1"));
    assert_eq!(cents(-12.5).as_deref(), Ok("-12.5"));
    assert_eq!(cents(0.0).as_deref(), Ok("0"));
    assert_eq!(cents(100.0).as_deref(), Ok("100"));
    assert_eq!(cents(99_999_999.99).as_deref(), Ok("99999999.99"));
    assert_eq!(
        real_to_decimal_column(1e20, None, None).as_deref(),
        Ok("100000000000000000000")
    );
    assert_eq!(
        real_to_decimal_column(1e-7, Some(10), Some(7)).as_deref(),
        Ok("0.0000001")
    );
    assert_eq!(
        real_to_decimal_column(0.125, None, None).as_deref(),
        Ok("0.125")
    );
}

#[test]
fn a_real_the_decimal_column_would_round_or_overflow_is_refused_naming_the_value() {
    let cents = |r: f64| real_to_decimal_column(r, Some(10), Some(2));
    let e = cents(0.125).unwrap_err();
    assert!(
        matches!(
            e,
            RealToDecimalError::Rounded {
                digits: 3,
                scale: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("0.125"), "{e}");
    let e = cents(1e20).unwrap_err();
    assert!(
        matches!(
            e,
            RealToDecimalError::TooLarge {
                digits: 21,
                allowed: 8,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("100000000000000000000"), "{e}");
    assert!(
        cents(100_000_000.0).is_err(),
        "9 integer digits in decimal(10,2)"
    );
    // The float nearest 0.1 + 0.2 is not the float nearest 0.3: its shortest decimal
    // is 0.30000000000000004, which two places would round.
    assert!(cents(0.1 + 0.2).is_err());
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = real_to_decimal_column(bad, None, None).unwrap_err();
        assert!(matches!(e, RealToDecimalError::NotFinite { .. }), "{e:?}");
    }
    assert_eq!(
        real_to_decimal_column(-0.0, None, None),
        Err(RealToDecimalError::NegativeZero)
    );
}

proptest! {
    #[test]
    fn a_real_written_into_a_decimal_reads_back_as_the_same_float(
        bits in any::<u64>(),
        precision in 1u32..40,
        scale in 0u32..40,
    ) {
        let r = f64::from_bits(bits);
        let scale = scale.min(precision);
        if let Ok(d) = real_to_decimal_column(r, None, None) {
            prop_assert_eq!(d.parse::<f64>().unwrap().to_bits(), bits);
        } else {
            prop_assert!(!r.is_finite() || bits == 1 << 63);
        }
        if let Ok(d) = real_to_decimal_column(r, Some(precision), Some(scale)) {
            prop_assert_eq!(d.parse::<f64>().unwrap().to_bits(), bits);
            let body = d.trim_start_matches('-');
            let (int, frac) = body.split_once('.').unwrap_or((body, ""));
            prop_assert!(frac.len() <= scale as usize, "{} in ({}, {})", d, precision, scale);
            prop_assert!(
                int.trim_start_matches('0').len() <= (precision - scale) as usize,
                "{} in ({}, {})", d, precision, scale
            );
        }
    }

    #[test]
    fn a_real_written_as_a_short_decimal_is_accepted_by_a_column_of_that_scale(
        m in any::<i32>(),
        k in 0u32..7,
    ) {
        // The float nearest m / 10^k, as a program computing cents would write it.
        let r = f64::from(m) / 10f64.powi(k as i32);
        let d = real_to_decimal_column(r, Some(10 + k), Some(k)).unwrap();
        let scaled: bigdecimal::BigDecimal = d.parse().unwrap();
        prop_assert_eq!(scaled, bigdecimal::BigDecimal::new(m.into(), i64::from(k)));
    }
}
