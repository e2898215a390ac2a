//! # concord-wire: the sync protocol
//!
//! Two Concord nodes talk over one mutually authenticated TLS connection. Everything on
//! it is a *frame*: a 4-byte big-endian length, then that many bytes holding one
//! [`Frame`] in postcard encoding. `docs/protocol.md` specifies every byte.
//!
//! This crate only encodes and decodes; it does no IO beyond implementing
//! `tokio_util::codec` traits over byte buffers. Its promises:
//!
//! - **Versioned.** A frame is `Frame::V1(Message)`; a later protocol adds `V2` and is
//!   sent only to a peer whose [`Hello`] advertised it.
//! - **Bounded.** A frame longer than the configured maximum is refused before it is
//!   buffered; a batch holds at most [`MAX_BATCH_CHANGES`] changes; strings and keys
//!   are bounded by the frame. A batch too large for a frame (one huge value) travels
//!   in [`Piece`]s, reassembled up to the receiver's own size limit ([`Reassembler`]).
//! - **Never panics on input.** Any byte sequence decodes to a message or to a
//!   [`WireError`] naming what was wrong.

mod codec;
mod message;
mod pieces;

pub use codec::{BATCH_OVERHEAD, DEFAULT_MAX_FRAME, FrameCodec, WireError, encoded_size};
pub use message::{
    Ack, ChangeBatch, DELETE_COLUMNS_SINCE_VERSION, ErrorCode, ErrorMessage, Frame, Hello,
    MAX_BATCH_CHANGES, MIN_PROTOCOL_VERSION, Message, PIECES_SINCE_VERSION, PROTOCOL_VERSION,
    Piece, RECONCILE_SINCE_VERSION, Reconcile, ReconcileAnswer, SNAPSHOTS_SINCE_VERSION,
    SnapshotEnd, WITHHELD_SINCE_VERSION, Withheld,
};
pub use pieces::{
    BatchInPieces, DEFAULT_MAX_BATCH_BYTES, PIECE_OVERHEAD, Reassembler, split_batch,
};
