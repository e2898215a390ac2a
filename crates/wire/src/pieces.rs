//! Batches larger than a frame, carried in [`Piece`]s.
//!
//! A single change can be larger than any sensible frame (SQLite and PostgreSQL hold
//! values up to 1 GB), and refusing it would stop its origin's stream for good: every
//! later change waits behind it. So a sender encodes such a batch once and sends it in
//! slices, and the receiver puts the slices back together before decoding. Frames stay
//! small, so a large value never holds up pings or blows the per-frame limit, and the
//! receiver bounds what it buffers by its own limit on a batch's size, growing the buffer
//! only as bytes arrive (a peer announcing a huge total and sending nothing costs
//! nothing).

use crate::codec::WireError;
use crate::message::{ChangeBatch, MAX_BATCH_CHANGES, Piece};

/// Default largest batch accepted in pieces: 1 GiB of values and 64 MiB for the rest.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = (1 << 30) + (64 << 20);

/// Bytes a `Piece` frame needs beyond its slice: length prefix, frame and message tags,
/// three varints of at most 10 bytes and the slice's length varint.
pub const PIECE_OVERHEAD: usize = 4 + 1 + 1 + 10 + 10 + 10 + 10;

/// A batch encoded once, to be sent as pieces whose frames fit `max_frame`. Pieces are
/// slices of that one encoding, shared rather than copied, so pieces waiting to be
/// written cost no memory of their own.
#[derive(Debug)]
pub struct BatchInPieces {
    batch: u64,
    encoded: bytes::Bytes,
    slice: usize,
}

impl BatchInPieces {
    /// Encodes `batch` for pieces whose frames fit in `max_frame`.
    pub fn new(batch: &ChangeBatch, max_frame: u32) -> Result<Self, WireError> {
        let encoded =
            postcard::to_allocvec(batch).map_err(|e| WireError::Malformed(e.to_string()))?;
        Ok(Self {
            batch: batch.batch,
            encoded: encoded.into(),
            slice: (max_frame as usize).saturating_sub(PIECE_OVERHEAD).max(1),
        })
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = Piece> + '_ {
        let total = self.encoded.len() as u64;
        (0..self.encoded.len())
            .step_by(self.slice)
            .map(move |start| Piece {
                batch: self.batch,
                offset: start as u64,
                total,
                bytes: self
                    .encoded
                    .slice(start..(start + self.slice).min(self.encoded.len())),
            })
    }
}

/// Encodes `batch` and cuts the encoding into pieces whose frames fit in `max_frame`.
pub fn split_batch(batch: &ChangeBatch, max_frame: u32) -> Result<Vec<Piece>, WireError> {
    Ok(BatchInPieces::new(batch, max_frame)?.pieces().collect())
}

/// Puts the pieces of one batch at a time back together.
#[derive(Debug)]
pub struct Reassembler {
    max_batch_bytes: u64,
    current: Option<(u64, u64, Vec<u8>)>,
}

impl Reassembler {
    /// A reassembler refusing batches whose encoding exceeds `max_batch_bytes`.
    pub fn new(max_batch_bytes: u64) -> Self {
        Self {
            max_batch_bytes,
            current: None,
        }
    }

    /// Whether a batch is partly received.
    pub fn in_progress(&self) -> bool {
        self.current.is_some()
    }

    /// Takes the next piece; returns the batch once its last piece arrived. A piece out
    /// of order, for another batch before the current one is complete, beyond the size
    /// limit, or a batch that does not decode, is an error and nothing of it is kept.
    pub fn push(&mut self, piece: Piece) -> Result<Option<ChangeBatch>, WireError> {
        let result = self.accept(piece);
        if result.is_err() {
            self.current = None;
        }
        result
    }

    fn accept(&mut self, piece: Piece) -> Result<Option<ChangeBatch>, WireError> {
        if piece.total > self.max_batch_bytes {
            return Err(WireError::Limit(format!(
                "a batch of {} bytes in pieces exceeds the limit of {} bytes",
                piece.total, self.max_batch_bytes
            )));
        }
        let (batch, total, buffer) = self
            .current
            .get_or_insert_with(|| (piece.batch, piece.total, Vec::new()));
        if piece.batch != *batch || piece.total != *total {
            return Err(WireError::Malformed(format!(
                "a piece of batch {} (total {} bytes) arrived while batch {batch} ({total} bytes) was incomplete",
                piece.batch, piece.total
            )));
        }
        if piece.offset != buffer.len() as u64 {
            return Err(WireError::Malformed(format!(
                "a piece of batch {batch} starts at byte {}, expected {}",
                piece.offset,
                buffer.len()
            )));
        }
        if piece.bytes.is_empty() || buffer.len() as u64 + piece.bytes.len() as u64 > *total {
            return Err(WireError::Malformed(format!(
                "a piece of batch {batch} is empty or runs past its total of {total} bytes"
            )));
        }
        buffer.extend_from_slice(&piece.bytes);
        if (buffer.len() as u64) < *total {
            return Ok(None);
        }
        let Some((number, _, bytes)) = self.current.take() else {
            return Ok(None);
        };
        let decoded: ChangeBatch =
            postcard::from_bytes(&bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        if decoded.batch != number {
            return Err(WireError::Malformed(format!(
                "pieces of batch {number} reassemble into batch {}",
                decoded.batch
            )));
        }
        if decoded.changes.len() > MAX_BATCH_CHANGES {
            return Err(WireError::Limit(format!(
                "batch of {} changes exceeds the limit of {MAX_BATCH_CHANGES}",
                decoded.changes.len()
            )));
        }
        Ok(Some(decoded))
    }
}

#[cfg(test)]
mod tests {
    use concord_core::{
        CausalLength, Change, ColumnChange, Hlc, NodeId, PrimaryKey, Value, Version,
    };

    use super::*;

    fn big_change(bytes: usize) -> Change {
        let origin = NodeId::from_bytes([1; 16]);
        let version = Version {
            hlc: Hlc::new(1_700_000_000_000, 0),
            origin,
        };
        Change {
            origin,
            seq: 1,
            hlc: version.hlc,
            table: "files".into(),
            key: PrimaryKey::encode(&[Value::Integer(1)]).unwrap(),
            causal_length: CausalLength(1),
            columns: vec![ColumnChange {
                column: "content".into(),
                value: Value::Blob((0..bytes).map(|i| i as u8).collect()),
                version,
                replaced: None,
            }],
            delete_seen: None,
            last_in_txn: true,
        }
    }

    fn batch(bytes: usize) -> ChangeBatch {
        ChangeBatch {
            batch: 7,
            changes: vec![big_change(bytes)],
        }
    }

    #[test]
    fn a_batch_larger_than_a_frame_arrives_whole_from_its_pieces() {
        let original = batch(300_000);
        let pieces = split_batch(&original, 64 * 1024).unwrap();
        assert!(pieces.len() >= 5);
        for piece in &pieces {
            let frame = crate::FrameCodec::encode_to_vec(&crate::Frame::V1(crate::Message::Piece(
                piece.clone(),
            )))
            .unwrap();
            assert!(frame.len() <= 64 * 1024 + 4, "{}", frame.len());
        }
        let mut reassembler = Reassembler::new(DEFAULT_MAX_BATCH_BYTES);
        let last = pieces.len() - 1;
        for (n, piece) in pieces.into_iter().enumerate() {
            let out = reassembler.push(piece).unwrap();
            assert_eq!(out.is_some(), n == last);
            if let Some(batch) = out {
                assert_eq!(batch, original);
            }
        }
        assert!(!reassembler.in_progress());
    }

    #[test]
    fn pieces_out_of_order_or_of_two_batches_are_refused_and_nothing_kept() {
        let pieces = split_batch(&batch(200_000), 64 * 1024).unwrap();
        let mut r = Reassembler::new(DEFAULT_MAX_BATCH_BYTES);
        r.push(pieces[0].clone()).unwrap();
        let err = r.push(pieces[2].clone()).unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
        assert!(!r.in_progress());

        r.push(pieces[0].clone()).unwrap();
        let mut other = pieces[1].clone();
        other.batch = 8;
        let err = r.push(other).unwrap_err();
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[test]
    fn a_batch_beyond_the_size_limit_is_refused_before_it_is_buffered() {
        let mut r = Reassembler::new(1_000);
        let piece = Piece {
            batch: 1,
            offset: 0,
            total: 1 << 40,
            bytes: vec![0; 10].into(),
        };
        let err = r.push(piece).unwrap_err();
        assert!(matches!(err, WireError::Limit(_)), "{err}");
    }

    #[test]
    fn pieces_that_do_not_decode_to_their_batch_are_malformed() {
        let mut r = Reassembler::new(DEFAULT_MAX_BATCH_BYTES);
        let piece = Piece {
            batch: 1,
            offset: 0,
            total: 3,
            bytes: vec![0xff, 0xff, 0xff].into(),
        };
        assert!(matches!(r.push(piece), Err(WireError::Malformed(_))));
        let mut pieces = split_batch(&batch(1_000), 64 * 1024).unwrap();
        pieces[0].batch = 9;
        let err = r.push(pieces.remove(0)).unwrap_err();
        assert!(err.to_string().contains("reassemble into batch 7"), "{err}");
    }
}
