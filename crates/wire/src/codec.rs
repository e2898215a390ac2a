//! Framing: a 4-byte big-endian length, then a postcard-encoded [`Frame`].

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::message::{Frame, MAX_BATCH_CHANGES, Message};

/// Default largest frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// Bytes a `Changes` frame needs beyond its changes: length prefix, version and message
/// tags, batch number and change count (varints of at most 10 bytes each).
pub const BATCH_OVERHEAD: usize = 4 + 1 + 1 + 10 + 10;

/// The encoded size of one change inside a `Changes` message, so a sender can keep each
/// batch within the receiver's frame limit.
pub fn encoded_size(change: &concord_core::Change) -> usize {
    postcard::experimental::serialized_size(change).unwrap_or(usize::MAX)
}

/// What was wrong with bytes received or a message to send.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame announced a length beyond the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length (0 if unknown).
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The frame does not decode as a known message (unknown version or message type,
    /// truncated or trailing bytes).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message decoded but breaks a protocol limit.
    #[error("message breaks a limit: {0}")]
    Limit(String),
    /// The connection closed in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

/// Encodes and decodes [`Frame`]s over a byte stream.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max: u32,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        let inner = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_frame as usize)
            .new_codec();
        Self {
            inner,
            max: max_frame,
        }
    }

    /// Encodes one frame to bytes (length prefix included), for tests and tools.
    pub fn encode_to_vec(frame: &Frame) -> Result<Vec<u8>, WireError> {
        let body = postcard::to_allocvec(frame).map_err(|e| WireError::Malformed(e.to_string()))?;
        let len = u32::try_from(body.len()).map_err(|_| WireError::FrameTooLarge {
            len: body.len(),
            max: u32::MAX,
        })?;
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes a frame body (without the length prefix) and checks limits.
    pub fn decode_body(body: &[u8]) -> Result<Frame, WireError> {
        let (frame, rest): (Frame, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes after the message",
                rest.len()
            )));
        }
        check_limits(&frame)?;
        Ok(frame)
    }
}

fn check_limits(frame: &Frame) -> Result<(), WireError> {
    let Frame::V1(message) = frame;
    if let Message::Changes(batch) = message
        && batch.changes.len() > MAX_BATCH_CHANGES
    {
        return Err(WireError::Limit(format!(
            "batch of {} changes exceeds the limit of {MAX_BATCH_CHANGES}",
            batch.changes.len()
        )));
    }
    Ok(())
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let body = match self.inner.decode(src) {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let len = if src.len() >= 4 {
                    u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
                } else {
                    0
                };
                return Err(WireError::FrameTooLarge { len, max: self.max });
            }
            Err(e) => return Err(e.into()),
        };
        Self::decode_body(&body).map(Some)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(WireError::Truncated),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        let body =
            postcard::to_allocvec(&frame).map_err(|e| WireError::Malformed(e.to_string()))?;
        if body.len() > self.max as usize {
            return Err(WireError::FrameTooLarge {
                len: body.len(),
                max: self.max,
            });
        }
        self.inner
            .encode(Bytes::from(body), dst)
            .map_err(WireError::from)
    }
}

#[cfg(test)]
mod tests {
    use concord_core::{
        CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Value, Version, VersionVector,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::message::{Ack, ChangeBatch, ErrorCode, ErrorMessage, Hello};

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes([b; 16])
    }

    fn change(seq: u64) -> Change {
        let version = Version {
            hlc: Hlc::new(1_700_000_000_000, 1),
            origin: node(1),
        };
        Change {
            origin: node(1),
            seq,
            hlc: version.hlc,
            table: "customers".into(),
            key: PrimaryKey::encode(&[Value::Integer(seq as i64)]).unwrap(),
            causal_length: CausalLength(1),
            columns: vec![ColumnChange {
                column: "name".into(),
                value: Value::Text("Ada ✓".into()),
                version,
                replaced: None,
            }],
            delete_seen: None,
            last_in_txn: true,
        }
    }

    fn all_messages() -> Vec<Frame> {
        let mut vv = VersionVector::new();
        vv.set(node(1), 7);
        vec![
            Frame::V1(Message::Hello(Hello {
                min_version: 1,
                max_version: 1,
                node: node(2),
                holds: vv.clone(),
                max_frame: DEFAULT_MAX_FRAME,
                agent: "concord/0.1".into(),
            })),
            Frame::V1(Message::Changes(ChangeBatch {
                batch: 3,
                changes: vec![change(1), change(2)],
            })),
            Frame::V1(Message::Ack(Ack {
                batch: 3,
                holds: vv,
            })),
            Frame::V1(Message::Ping(9)),
            Frame::V1(Message::Pong(9)),
            Frame::V1(Message::Error(ErrorMessage {
                code: ErrorCode::Rejected,
                message: "bad".into(),
            })),
        ]
    }

    #[test]
    fn every_message_round_trips_through_the_codec() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        for frame in all_messages() {
            codec.encode(frame, &mut buf).unwrap();
        }
        for frame in all_messages() {
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn a_ping_has_the_documented_bytes() {
        // Length 3, then V1 = 0, Ping = 3, varint 9. docs/protocol.md shows this example.
        assert_eq!(
            FrameCodec::encode_to_vec(&Frame::V1(Message::Ping(9))).unwrap(),
            vec![0, 0, 0, 3, 0, 3, 9]
        );
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_buffered() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0x10, 0, 0][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, WireError::FrameTooLarge { max: 1024, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_protocol_version_or_message_type_is_malformed() {
        for body in [vec![1u8, 0], vec![0u8, 42]] {
            let err = FrameCodec::decode_body(&body).unwrap_err();
            assert!(matches!(err, WireError::Malformed(_)), "{err}");
        }
    }

    #[test]
    fn trailing_bytes_after_a_message_are_malformed() {
        let err = FrameCodec::decode_body(&[0, 3, 9, 0]).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_reported_as_truncated() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let bytes = FrameCodec::encode_to_vec(&all_messages()[1]).unwrap();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 2]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(WireError::Truncated)
        ));
    }

    #[test]
    fn a_batch_beyond_the_change_limit_is_refused() {
        let batch = ChangeBatch {
            batch: 1,
            changes: vec![change(1); MAX_BATCH_CHANGES + 1],
        };
        let bytes = postcard::to_allocvec(&Frame::V1(Message::Changes(batch))).unwrap();
        assert!(matches!(
            FrameCodec::decode_body(&bytes),
            Err(WireError::Limit(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = FrameCodec::new(4096);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            let _ = FrameCodec::decode_body(&bytes);
        }

        #[test]
        fn corrupting_a_valid_frame_never_panics(pos in 0usize..200, byte in any::<u8>()) {
            let mut bytes = postcard::to_allocvec(&all_messages()[1]).unwrap();
            let at = pos % bytes.len();
            bytes[at] = byte;
            let _ = FrameCodec::decode_body(&bytes);
        }
    }
}

#[cfg(test)]
mod documented_examples {
    use concord_core::{
        CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Value, Version, VersionVector,
    };

    use super::*;
    use crate::message::{Ack, ChangeBatch, Hello};

    /// The worked examples in docs/protocol.md; if this test changes, so must the doc.
    pub(super) fn examples() -> Vec<(&'static str, Frame)> {
        let a = NodeId::from_bytes([0xaa; 16]);
        let b = NodeId::from_bytes([0xbb; 16]);
        let mut holds = VersionVector::new();
        holds.set(a, 5);
        let version = Version {
            hlc: Hlc::new(1_000, 2),
            origin: a,
        };
        vec![
            ("ping", Frame::V1(Message::Ping(300))),
            (
                "hello",
                Frame::V1(Message::Hello(Hello {
                    min_version: 1,
                    max_version: 1,
                    node: b,
                    holds: holds.clone(),
                    max_frame: 65_536,
                    agent: "x".into(),
                })),
            ),
            (
                "changes",
                Frame::V1(Message::Changes(ChangeBatch {
                    batch: 1,
                    changes: vec![Change {
                        origin: a,
                        seq: 6,
                        hlc: version.hlc,
                        table: "t".into(),
                        key: PrimaryKey::encode(&[Value::Integer(7)]).unwrap(),
                        causal_length: CausalLength(1),
                        columns: vec![ColumnChange {
                            column: "v".into(),
                            value: Value::Text("hi".into()),
                            version,
                            replaced: None,
                        }],
                        delete_seen: None,
                        last_in_txn: true,
                    }],
                })),
            ),
            (
                "snapshot end",
                Frame::V1(Message::SnapshotEnd(crate::message::SnapshotEnd {
                    batch: 3,
                    holds: holds.clone(),
                })),
            ),
            ("ack", Frame::V1(Message::Ack(Ack { batch: 1, holds }))),
            (
                "reconcile",
                Frame::V1(Message::Reconcile(crate::message::Reconcile {
                    id: 1,
                    table: "t".into(),
                    compare: concord_core::reconcile::Compare::Clocks,
                    message: concord_core::reconcile::Message {
                        ranges: vec![
                            concord_core::reconcile::Range {
                                upper: concord_core::reconcile::Bound::Below(vec![0x14, 0x80]),
                                mode: concord_core::reconcile::RangeMode::Fingerprint(
                                    concord_core::reconcile::Fingerprint([0x11; 16]),
                                ),
                            },
                            concord_core::reconcile::Range {
                                upper: concord_core::reconcile::Bound::End,
                                mode: concord_core::reconcile::RangeMode::Skip,
                            },
                        ],
                    },
                })),
            ),
            (
                "reconcile answer",
                Frame::V1(Message::ReconcileAnswer(crate::message::ReconcileAnswer {
                    id: 1,
                    message: None,
                })),
            ),
            (
                "withheld",
                Frame::V1(Message::Withheld(crate::message::Withheld {
                    batch: 4,
                    origin: a,
                    first_seq: 7,
                    last_seq: 9,
                    reason: "no".into(),
                })),
            ),
            (
                "piece",
                Frame::V1(Message::Piece(crate::message::Piece {
                    batch: 2,
                    offset: 300,
                    total: 302,
                    bytes: vec![0xde, 0xad].into(),
                })),
            ),
        ]
    }

    #[test]
    fn worked_examples_match_the_protocol_document() {
        let doc = include_str!("../../../docs/protocol.md");
        for (name, frame) in examples() {
            let bytes = FrameCodec::encode_to_vec(&frame).unwrap();
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let line = hex.join(" ");
            assert!(
                doc.contains(&line),
                "docs/protocol.md lacks the {name} example:\n{line}"
            );
            assert_eq!(FrameCodec::decode_body(&bytes[4..]).unwrap(), frame);
        }
    }
}
