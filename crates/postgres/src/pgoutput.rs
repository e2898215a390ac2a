//! Parsing the messages of PostgreSQL's `pgoutput` logical decoding plugin.
//!
//! Log-based capture ([`crate::logical`]) reads a replication slot through
//! `pg_logical_slot_peek_binary_changes`, which returns one `pgoutput` message per row,
//! in commit order: `Begin`, the transaction's row changes, `Commit`. This module turns
//! those bytes into [`Message`]s, nothing more: it owns no state and makes no decision.
//! The layout is PostgreSQL's "Logical Replication Message Formats" (protocol version 1,
//! values in text format, which is what the plugin sends unless asked for binary).
//!
//! Every read is bounds-checked: a message that ends early or names an unknown kind is
//! an error that says which, never a panic, since the bytes come from a server and a
//! future server version may add kinds (those are skipped by the caller, not guessed).

use thiserror::Error;

/// A `pgoutput` message that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// The message ended before a field it must carry.
    #[error("pgoutput message {kind:?} ends early (reading {field})")]
    Truncated { kind: char, field: &'static str },
    /// A tuple column carried a marker other than `n`, `u`, `t` or `b`.
    #[error("pgoutput message {kind:?} has an unknown column marker {marker:?}")]
    ColumnMarker { kind: char, marker: char },
    /// A tuple was introduced by a marker other than the one expected.
    #[error("pgoutput message {kind:?} has an unexpected tuple marker {marker:?}")]
    TupleMarker { kind: char, marker: char },
    /// The message was empty.
    #[error("empty pgoutput message")]
    Empty,
}

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change (the plugin does not send it again).
    Unchanged,
    /// The value in the type's text format.
    Text(Vec<u8>),
    /// The value in the type's binary format (only when asked for).
    Binary(Vec<u8>),
}

/// A column of a relation, as the plugin describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelationColumn {
    /// Part of the replica identity.
    pub(crate) key: bool,
    pub(crate) name: String,
    pub(crate) type_oid: u32,
}

/// A relation (table) the following row messages refer to by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) id: u32,
    /// The schema; empty for `pg_catalog`.
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub(crate) replica_identity: u8,
    pub(crate) columns: Vec<RelationColumn>,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// A transaction starts; `final_lsn` is the LSN of its commit record.
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 00:00 UTC.
        commit_time: i64,
        xid: u32,
    },
    /// The transaction ends; the next one starts at `end_lsn`.
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    /// The transaction was replayed from another node (a replication origin).
    Origin {
        name: String,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    /// `old` is the whole old row under `REPLICA IDENTITY FULL`, its key columns when
    /// the key changed, and absent otherwise.
    Update {
        relation: u32,
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: Vec<Datum>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// A message written with `pg_logical_emit_message` (sent when the slot is read
    /// with `messages 'true'`); `lsn` is where it was written.
    Logical {
        transactional: bool,
        lsn: u64,
        prefix: String,
    },
    /// A kind this parser does not act on (type, streaming).
    Other(char),
}

/// PostgreSQL's epoch (2000-01-01) in milliseconds after the Unix epoch.
const POSTGRES_EPOCH_MS: i64 = 946_684_800_000;

/// A `pgoutput` timestamp (microseconds since 2000) in milliseconds since 1970.
pub(crate) fn unix_millis(postgres_micros: i64) -> i64 {
    POSTGRES_EPOCH_MS + postgres_micros.div_euclid(1000)
}

struct Reader<'a> {
    bytes: &'a [u8],
    kind: char,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        if self.bytes.len() < n {
            return Err(ParseError::Truncated {
                kind: self.kind,
                field,
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ParseError> {
        Ok(self.take(1, field)?[0])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, ParseError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// A NUL-terminated string (names are UTF-8 in a UTF-8 database; anything else is
    /// kept lossily, since names only serve to find tracked tables).
    fn cstring(&mut self, field: &'static str) -> Result<String, ParseError> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Truncated {
                kind: self.kind,
                field,
            })?;
        let s = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self) -> Result<Vec<Datum>, ParseError> {
        let n = self.u16("column count")?;
        let mut out = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let datum = match self.u8("column marker")? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                marker @ (b't' | b'b') => {
                    let len = self.u32("value length")? as usize;
                    let value = self.take(len, "value")?.to_vec();
                    if marker == b't' {
                        Datum::Text(value)
                    } else {
                        Datum::Binary(value)
                    }
                }
                other => {
                    return Err(ParseError::ColumnMarker {
                        kind: self.kind,
                        marker: char::from(other),
                    });
                }
            };
            out.push(datum);
        }
        Ok(out)
    }

    fn expect_tuple(&mut self, markers: &[u8]) -> Result<(u8, Vec<Datum>), ParseError> {
        let marker = self.u8("tuple marker")?;
        if !markers.contains(&marker) {
            return Err(ParseError::TupleMarker {
                kind: self.kind,
                marker: char::from(marker),
            });
        }
        Ok((marker, self.tuple()?))
    }
}

/// Parses one message.
pub(crate) fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
    let (&first, rest) = bytes.split_first().ok_or(ParseError::Empty)?;
    let kind = char::from(first);
    let mut r = Reader { bytes: rest, kind };
    Ok(match first {
        b'B' => Message::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => {
            r.u8("flags")?;
            Message::Commit {
                commit_lsn: r.u64("commit LSN")?,
                end_lsn: r.u64("end LSN")?,
                commit_time: r.i64("commit time")?,
            }
        }
        b'O' => {
            r.u64("origin LSN")?;
            Message::Origin {
                name: r.cstring("origin name")?,
            }
        }
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.cstring("namespace")?;
            let name = r.cstring("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let n = r.u16("column count")?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let flags = r.u8("column flags")?;
                let name = r.cstring("column name")?;
                let type_oid = r.u32("column type")?;
                r.u32("type modifier")?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32("relation id")?;
            let (_, new) = r.expect_tuple(b"N")?;
            Message::Insert { relation, new }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let (marker, first) = r.expect_tuple(b"KON")?;
            if marker == b'N' {
                Message::Update {
                    relation,
                    old: None,
                    new: first,
                }
            } else {
                let (_, new) = r.expect_tuple(b"N")?;
                Message::Update {
                    relation,
                    old: Some(first),
                    new,
                }
            }
        }
        b'D' => {
            let relation = r.u32("relation id")?;
            let (_, old) = r.expect_tuple(b"KO")?;
            Message::Delete { relation, old }
        }
        b'T' => {
            let n = r.u32("relation count")?;
            r.u8("options")?;
            let relations = (0..n)
                .map(|_| r.u32("relation id"))
                .collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        b'M' => {
            let transactional = r.u8("flags")? & 1 == 1;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstring("prefix")?;
            let len = r.u32("content length")? as usize;
            r.take(len, "content")?;
            Message::Logical {
                transactional,
                lsn,
                prefix,
            }
        }
        other => Message::Other(char::from(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(values: &[Option<&str>]) -> Vec<u8> {
        let mut out = (values.len() as u16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => out.push(b'n'),
                Some(s) => {
                    out.push(b't');
                    out.extend((s.len() as u32).to_be_bytes());
                    out.extend(s.as_bytes());
                }
            }
        }
        out
    }

    #[test]
    fn an_update_with_the_full_old_row_yields_both_tuples() {
        let mut m = b"U".to_vec();
        m.extend(16388u32.to_be_bytes());
        m.push(b'O');
        m.extend(tuple(&[Some("1"), Some("x")]));
        m.push(b'N');
        m.extend(tuple(&[Some("1"), None]));
        assert_eq!(
            parse(&m).unwrap(),
            Message::Update {
                relation: 16388,
                old: Some(vec![Datum::Text(b"1".to_vec()), Datum::Text(b"x".to_vec())]),
                new: vec![Datum::Text(b"1".to_vec()), Datum::Null],
            }
        );
    }

    #[test]
    fn a_relation_names_its_key_columns() {
        let mut m = b"R".to_vec();
        m.extend(7u32.to_be_bytes());
        m.extend(b"public\0t\0f");
        m.extend(2u16.to_be_bytes());
        m.extend([1u8]);
        m.extend(b"id\0");
        m.extend(20u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        m.extend([0u8]);
        m.extend(b"v\0");
        m.extend(25u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        let Message::Relation(rel) = parse(&m).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!((rel.namespace.as_str(), rel.name.as_str()), ("public", "t"));
        assert_eq!(rel.replica_identity, b'f');
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 25);
    }

    #[test]
    fn a_message_cut_short_is_an_error_naming_the_field() {
        let mut m = b"I".to_vec();
        m.extend(7u32.to_be_bytes());
        m.push(b'N');
        m.extend(1u16.to_be_bytes());
        m.push(b't');
        m.extend(10u32.to_be_bytes());
        m.extend(b"abc");
        assert_eq!(
            parse(&m),
            Err(ParseError::Truncated {
                kind: 'I',
                field: "value"
            })
        );
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert!(matches!(
            parse(b"D\0\0\0\x07X"),
            Err(ParseError::TupleMarker { kind: 'D', .. })
        ));
    }

    #[test]
    fn commit_times_count_from_the_year_2000() {
        assert_eq!(unix_millis(0), 946_684_800_000);
        assert_eq!(unix_millis(1_500), 946_684_800_001);
    }
}
