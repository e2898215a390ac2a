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
//!   are bounded by the frame.
//! - **Never panics on input.** Any byte sequence decodes to a message or to a
//!   [`WireError`] naming what was wrong.

mod codec;
mod message;

pub use codec::{BATCH_OVERHEAD, DEFAULT_MAX_FRAME, FrameCodec, WireError, encoded_size};
pub use message::{
    Ack, ChangeBatch, ErrorCode, ErrorMessage, Frame, Hello, MAX_BATCH_CHANGES, Message,
    PROTOCOL_VERSION,
};
