//! Protocol messages.

use concord_core::reconcile::{Compare, Message as RangeMessage};
use concord_core::{Change, NodeId, VersionVector};
use serde::{Deserialize, Serialize};

/// The newest protocol version this build speaks. Version 2 adds [`Message::Piece`];
/// version 3 adds snapshots (rows' states as changes with sequence 0, closed by
/// [`Message::SnapshotEnd`]); version 4 adds range reconciliation
/// ([`Message::Reconcile`], [`Message::ReconcileAnswer`]); version 5 adds
/// [`Message::Withheld`] and lets a delete list the column clocks its writer held (see
/// [`DELETE_COLUMNS_SINCE_VERSION`]); everything else is as in version 1, which this
/// build still speaks.
pub const PROTOCOL_VERSION: u16 = 5;

/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The first protocol version in which [`Message::Piece`] may be sent.
pub const PIECES_SINCE_VERSION: u16 = 2;

/// The first protocol version in which a snapshot may be sent.
pub const SNAPSHOTS_SINCE_VERSION: u16 = 3;

/// The first protocol version in which reconciliation messages may be sent.
pub const RECONCILE_SINCE_VERSION: u16 = 4;

/// The first protocol version in which a delete may carry columns: the clock of each
/// column its writer held (values `Null`). An older peer refuses a delete with columns,
/// so a sender drops them for it (the peer then judges by `delete_seen` alone).
pub const DELETE_COLUMNS_SINCE_VERSION: u16 = 5;

/// The first protocol version in which [`Message::Withheld`] may be sent.
pub const WITHHELD_SINCE_VERSION: u16 = 5;

/// The most changes one [`ChangeBatch`] may carry.
pub const MAX_BATCH_CHANGES: usize = 10_000;

/// One frame on the wire: a protocol version, then a message of that version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Protocol version 1.
    V1(Message),
}

/// The messages of protocol version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message in each direction.
    Hello(Hello),
    /// Changes the receiver lacks, in an order it can apply.
    Changes(ChangeBatch),
    /// The receiver applied (durably) everything up to a batch.
    Ack(Ack),
    /// Liveness probe; answered with [`Message::Pong`] carrying the same number.
    Ping(u64),
    /// Answer to [`Message::Ping`].
    Pong(u64),
    /// The sender is closing the session because of this error.
    Error(ErrorMessage),
    /// A slice of a [`ChangeBatch`] too large for one frame (protocol version 2).
    Piece(Piece),
    /// The end of a snapshot (protocol version 3): every row's state was sent, in
    /// batches before this one, and the receiver, once it merged them, holds `holds`.
    SnapshotEnd(SnapshotEnd),
    /// One step of a range reconciliation of one table (protocol version 4), from the
    /// side that started it; answered with [`Message::ReconcileAnswer`] with the same id.
    Reconcile(Reconcile),
    /// The answer to [`Message::Reconcile`] (protocol version 4).
    ReconcileAnswer(ReconcileAnswer),
    /// The sender will not send a source transaction it holds (protocol version 5): the
    /// link's mapping cannot convert it for the receiver. Numbered like a batch.
    Withheld(Withheld),
}

/// A source transaction the sender holds but does not send to this receiver, because
/// the link's schema mapping cannot convert one of its changes (protocol version 5).
/// The receiver counts `first_seq..=last_seq` of `origin` as held, so the changes after
/// it keep flowing, and records the range as a failure. It is numbered, ordered and
/// acknowledged like a [`ChangeBatch`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Withheld {
    /// Batch number in this session.
    pub batch: u64,
    /// The origin of the withheld changes; never the receiver itself.
    pub origin: NodeId,
    /// The first sequence number withheld: the first change of the source transaction.
    pub first_seq: u64,
    /// The last sequence number withheld, which ends the source transaction.
    pub last_seq: u64,
    /// Why, for people: the mapping's error.
    pub reason: String,
}

/// One step of a reconciliation, from the side that started it. The first step of an
/// id carries the starter's [`concord_core::reconcile::Reconciler::initiate`] message;
/// each next one its answer to the previous [`ReconcileAnswer`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reconcile {
    /// Chosen by the starter, unique among its reconciliations in this session.
    pub id: u64,
    /// The table, by the name changes to the receiver carry.
    pub table: String,
    /// What the items' hashes cover.
    pub compare: Compare,
    /// The ranges.
    pub message: RangeMessage,
}

/// The answering side's reply to one [`Reconcile`] step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconcileAnswer {
    /// The id of the step answered.
    pub id: u64,
    /// The ranges, or `None` when the answering side has nothing left to say: the
    /// reconciliation is complete.
    pub message: Option<RangeMessage>,
}

/// Closes a snapshot. It is numbered like a batch and acknowledged like one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// Batch number in this session.
    pub batch: u64,
    /// The version vector the snapshot's rows reflect.
    pub holds: VersionVector,
}

/// One slice of the postcard encoding of a [`ChangeBatch`] that does not fit in a frame.
/// The slices of one batch are sent in order, with no `Changes` or other `Piece` between
/// them; the receiver reassembles the batch and handles it like a `Changes` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    /// The batch number the reassembled batch carries.
    pub batch: u64,
    /// Where these bytes start in the batch's encoding; the first piece starts at 0 and
    /// each next one where the previous ended.
    pub offset: u64,
    /// The length of the whole encoding, the same in every piece of the batch.
    pub total: u64,
    /// The bytes: a slice of the batch's encoding, shared, not copied, while the pieces
    /// wait to be written (encoded exactly as a `Vec<u8>` would be).
    pub bytes: bytes::Bytes,
}

/// Opens a session: who the sender is and what it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the sender speaks.
    pub min_version: u16,
    /// Newest protocol version the sender speaks.
    pub max_version: u16,
    /// The sender's node id. It must match the identity its TLS certificate proves.
    pub node: NodeId,
    /// What the sender holds: the peer sends exactly the changes beyond this.
    pub holds: VersionVector,
    /// Largest frame the sender accepts, in bytes.
    pub max_frame: u32,
    /// Free-form software name and version, for logs.
    pub agent: String,
}

/// A batch of changes, numbered per session from 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Batch number in this session.
    pub batch: u64,
    /// The changes, in the sender's log order.
    pub changes: Vec<Change>,
}

/// Acknowledges batches up to `batch`, all applied and committed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest batch number applied.
    pub batch: u64,
    /// What the receiver now holds.
    pub holds: VersionVector,
}

/// Why a session is being closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No protocol version in common.
    UnsupportedVersion,
    /// The Hello's node id is not the one the TLS certificate proves, or is not a
    /// configured peer.
    UnknownIdentity,
    /// A frame or message could not be decoded, or broke a limit.
    Malformed,
    /// A message arrived out of order (a second Hello, an Ack for an unsent batch).
    Unexpected,
    /// The receiver refused a batch (bad change); the session will be retried later.
    Rejected,
    /// The sender is shutting down.
    ShuttingDown,
}

/// An error reported to the peer before closing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Category.
    pub code: ErrorCode,
    /// Explanation for the peer's logs.
    pub message: String,
}
