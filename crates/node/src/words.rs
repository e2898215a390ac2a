//! How the node puts things into words for people: error chains, durations and the
//! protocol's error codes.
//!
//! Logs, status and the messages sent to peers are read by people, not by `Debug`:
//! `Some(0.0.0.0:7400)`, `6.977513ms` or `ShuttingDown` make them work out what the
//! node meant. Error enums here keep to one rule: a variant's message never repeats its
//! source, and whoever shows an error to a person shows the whole chain through
//! [`chain`], so each cause appears exactly once.

use std::time::Duration;

use concord_wire::ErrorCode;

pub(crate) use concord_store::error_chain as chain;

/// A duration as people write it: `850 µs`, `7 ms`, `2.3 s`, `4 min 5 s`, `3 h 20 min`.
pub(crate) fn duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{} ms", (micros + 500) / 1_000)
    } else if d.as_secs() < 60 {
        let tenths = (micros + 50_000) / 100_000;
        if tenths.is_multiple_of(10) {
            format!("{} s", tenths / 10)
        } else {
            format!("{}.{} s", tenths / 10, tenths % 10)
        }
    } else if d.as_secs() < 3_600 {
        let s = d.as_secs();
        format!("{} min {} s", s / 60, s % 60)
    } else {
        let m = d.as_secs() / 60;
        format!("{} h {} min", m / 60, m % 60)
    }
}

/// What a peer's error code means, in words.
pub(crate) fn code(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnsupportedVersion => "no protocol version in common",
        ErrorCode::UnknownIdentity => "unknown identity",
        ErrorCode::Malformed => "a malformed message",
        ErrorCode::Unexpected => "an unexpected message",
        ErrorCode::Rejected => "a refused batch",
        ErrorCode::ShuttingDown => "shutting down",
    }
}

/// An optional address for a log line: the address, or `none`.
pub(crate) fn addr_or_none(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_owned(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(Duration::from_nanos(6_977_513)), "7 ms");
        assert_eq!(duration(Duration::from_micros(850)), "850 µs");
        assert_eq!(duration(Duration::from_millis(2_300)), "2.3 s");
        assert_eq!(duration(Duration::from_secs(30)), "30 s");
        assert_eq!(duration(Duration::from_secs(245)), "4 min 5 s");
        assert_eq!(duration(Duration::from_secs(12_000)), "3 h 20 min");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("binding 0.0.0.0:7400")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("connection: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn a_chain_names_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        assert_eq!(
            chain(&Outer(io())),
            "binding 0.0.0.0:7400: Address already in use"
        );
        assert_eq!(chain(&Repeats(io())), "connection: Address already in use");
    }
}
