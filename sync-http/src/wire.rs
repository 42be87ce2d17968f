//! The protocol between [`HttpBackend`](crate::HttpBackend) and the hub
//! server: one `POST` per [`Hub`](sync_core::hub::Hub) method, JSON
//! bodies, zstd-compressed when they are large.
//!
//! # Versioning
//!
//! Every path starts with the protocol version (`/v1/push`), and both
//! sides send it in the `tidesync-protocol` header too. A server answers a
//! version it does not speak with `400` and the code `unsupported-version`,
//! naming the versions it speaks; the client turns that into
//! [`Error::Protocol`](sync_core::Error::Protocol) with both versions in
//! the message. Within a version, fields may be added (readers ignore what
//! they do not know, and default what is missing), never renamed or given
//! another meaning.
//!
//! # Bodies
//!
//! `application/json`; a body of at least [`COMPRESS_FROM`] bytes is sent
//! with `content-encoding: zstd`, and a client that sends
//! `accept-encoding: zstd` gets large answers compressed the same way.
//!
//! # Errors
//!
//! Any answer other than `200` carries `{"error": {"code", "message"}}`:
//!
//! | status | code | meaning |
//! |---|---|---|
//! | 400 | `bad-request` | malformed, truncated or undecodable body |
//! | 400 | `unsupported-version` | a protocol version the server does not speak |
//! | 404 | `not-found` | no such endpoint |
//! | 401 | `unauthorized` | no token, or a wrong, expired or revoked one |
//! | 403 | `forbidden` | a push under a device identity another user pushed under first |
//! | 408 | `timeout` | the body did not arrive in time |
//! | 409 | `install-required` | the push names an install this server does not know: push again with the tables |
//! | 413 | `too-large` | the body (or what it decompresses to) is over the server's limit |
//! | 415 | `bad-request` | a content encoding other than zstd |
//! | 422 | `refused` | the hub refused the request (an undeclared table, another ownership, a batch out of order) |
//! | 503 | `unavailable` | the hub database cannot be reached, is busy, or the server (64) or this user (8) has too many requests in flight |
//! | 500 | `internal` | anything else (logged by the server) |

use serde::{Deserialize, Serialize};
use sync_core::TableSpec;
use sync_core::hub::Cursor;
use sync_core::{Change, NodeId};

/// The protocol version this release speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The header carrying the protocol version.
pub const VERSION_HEADER: &str = "tidesync-protocol";

/// The header of a page's answer (a pull or a snapshot) naming the next
/// page: the next cursor of a pull that returned changes, the `next` token
/// of a snapshot page that is not the last. The same as in the body, so
/// that a client can ask for the next page before it reads this one.
pub const NEXT_HEADER: &str = "tidesync-next";

/// Bodies of at least this many bytes are compressed.
pub const COMPRESS_FROM: usize = 1024;

/// The path of an endpoint in this protocol version.
#[cfg(feature = "client")]
pub(crate) fn path(endpoint: &str) -> String {
    format!("/v{PROTOCOL_VERSION}/{endpoint}")
}

/// `POST /v1/install`: answered with a `HubInfo`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InstallRequest {
    pub(crate) tables: Vec<TableSpec>,
}

/// The answer to an install.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InstallAnswer {
    #[serde(flatten)]
    pub(crate) info: sync_core::hub::HubInfo,
    /// Names the installed tables in later pushes (the server merges a
    /// device's pushes with its own tables).
    pub(crate) tables: String,
}

/// `POST /v1/push`: answered with a `PushAck`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PushRequest {
    pub(crate) changes: Vec<Change>,
    /// The `tables` of the device's install; the server answers `409
    /// install-required` when it does not know them.
    #[serde(default)]
    pub(crate) tables: Option<String>,
    /// The device's tables themselves, sent again after a `409`: the
    /// server installs them and pushes in one request (a load balancer
    /// may send the next request to yet another server).
    #[serde(default)]
    pub(crate) install: Option<Vec<TableSpec>>,
}

/// A [`PushRequest`] as the client sends it: the changes borrowed, not
/// copied.
#[cfg(feature = "client")]
#[derive(Debug, Serialize)]
pub(crate) struct PushBody<'a> {
    pub(crate) changes: &'a [Change],
    pub(crate) tables: Option<String>,
    pub(crate) install: Option<Vec<TableSpec>>,
}

/// `POST /v1/standing`: answered with a `Standing`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StandingRequest {
    pub(crate) origin: NodeId,
    #[serde(default)]
    pub(crate) at: Option<Cursor>,
}

/// `POST /v1/pull`: answered with a `PullBatch`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PullRequest {
    pub(crate) cursor: Cursor,
    pub(crate) limit: u64,
    /// Leave out this origin's changes.
    #[serde(default)]
    pub(crate) excluding: Option<NodeId>,
}

/// `POST /v1/states`: answered with a `StatePage` (the rows changed after
/// the cursor, each once at its latest state; see `Hub::pull_states`). A
/// server of a release before it answers `404`: the client pulls changes
/// instead.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StatesRequest {
    pub(crate) cursor: Cursor,
    pub(crate) limit: u64,
    /// Leave out the rows whose every column this origin's pushes set.
    pub(crate) excluding: NodeId,
}

/// `POST /v1/snapshot`: answered with a [`SnapshotAnswer`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotRequest {
    #[serde(default)]
    pub(crate) after: Option<String>,
    pub(crate) limit: u64,
    /// The `tables` of the device's install (key names of its rows).
    #[serde(default)]
    pub(crate) tables: Option<String>,
    /// Leave out the rows whose every column this origin's pushes set. A
    /// server of a release before it ignores it and sends them (merged
    /// again, they change nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) excluding: Option<NodeId>,
}

/// The answer to a snapshot request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotAnswer {
    pub(crate) cursor: Cursor,
    pub(crate) page: sync_core::hub::SnapshotPage,
}

/// The body of every answer other than `200`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// What went wrong, for a program (`code`) and for a person (`message`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ErrorDetail {
    pub(crate) code: String,
    pub(crate) message: String,
}

/// Compress `body` if it is large enough: the bytes, and whether they are
/// compressed.
pub(crate) fn encode(body: Vec<u8>) -> (Vec<u8>, bool) {
    if body.len() < COMPRESS_FROM {
        return (body, false);
    }
    match zstd::bulk::compress(&body, 1) {
        Ok(z) if z.len() < body.len() => (z, true),
        _ => (body, false),
    }
}

/// Why a body could not be decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// It decompresses to more than the limit.
    TooLarge,
    /// It is not valid zstd.
    Malformed(String),
}

/// The base-2 logarithm of the largest zstd window a body of `limit`
/// bytes may need.
fn window_log(limit: usize) -> u32 {
    (usize::BITS - limit.saturating_sub(1).leading_zeros()).clamp(10, 31)
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge => f.write_str("over the size limit"),
            DecodeError::Malformed(why) => f.write_str(why),
        }
    }
}

/// Decompress a zstd body, refusing to produce more than `limit` bytes.
pub(crate) fn decompress(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read;
    // A frame that says what it holds is refused for its size at once.
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(body)
        && size > limit as u64
    {
        return Err(DecodeError::TooLarge);
    }
    let mut decoder = zstd::stream::read::Decoder::new(body)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    // The window a frame declares is memory the decoder takes before it
    // writes a byte: no larger than the limit (rounded up to a power of
    // two), which a frame of a body within the limit that gives its size
    // (as this crate's do) never needs: its window is at most its size.
    decoder
        .window_log_max(window_log(limit))
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let mut out = Vec::new();
    // One byte more than the limit tells a body at the limit from one over.
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Malformed(format!("zstd: {e}")))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[cfg(feature = "client")]
    #[test]
    fn a_push_body_reads_back_as_the_request_it_stands_for() {
        use sea_orm::Value;
        use sync_core::{ChangeId, Hlc, Op};
        let origin = NodeId([3; 16]);
        let change = Change {
            id: ChangeId { origin, seq: 9 },
            table: "contacts".into(),
            pk: vec![("id".into(), Value::Int(Some(1)))],
            op: Op::Insert,
            columns: vec![("name".into(), Value::String(Some("Ann".into())))],
            hlc: Hlc {
                physical: 1,
                logical: 2,
                node: origin,
            },
            base: vec![],
        };
        for (tables, install) in [(Some("t1".to_owned()), None), (None, Some(vec![]))] {
            let sent = PushBody {
                changes: std::slice::from_ref(&change),
                tables: tables.clone(),
                install: install.clone(),
            };
            let read: PushRequest =
                serde_json::from_slice(&serde_json::to_vec(&sent).unwrap()).unwrap();
            assert_eq!(read.changes, vec![change.clone()]);
            assert_eq!(read.tables, tables);
            assert_eq!(read.install.map(|t| t.len()), install.map(|t| t.len()));
        }
    }

    #[test]
    fn small_bodies_travel_as_they_are_and_large_ones_compressed() {
        let small = b"{}".to_vec();
        assert_eq!(encode(small.clone()), (small, false));
        let large = serde_json::to_vec(&vec!["contact"; 1000]).unwrap();
        let (z, compressed) = encode(large.clone());
        assert!(compressed && z.len() < large.len() / 10);
        assert_eq!(decompress(&z, large.len()).unwrap(), large);
    }

    #[test]
    fn a_frame_declaring_a_window_past_the_limit_is_refused_before_decoding() {
        // A small frame whose header asks for a 128 MiB window: a decoder
        // that honoured it would take that memory for a few bytes.
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.window_log(27).unwrap();
        e.long_distance_matching(true).unwrap();
        e.write_all(b"a few bytes").unwrap();
        let frame = e.finish().unwrap();
        assert!(matches!(
            decompress(&frame, 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(decompress(&frame, 1 << 27).unwrap(), b"a few bytes");
    }

    #[test]
    fn bodies_up_to_the_limit_decode_whatever_their_size() {
        // The server compresses a whole answer at once: its frame's window
        // is its size, which may be any size up to the limit.
        for len in [2000, (1 << 20) + 1, 3 << 20] {
            let body: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let (z, compressed) = encode(body.clone());
            assert!(compressed);
            assert_eq!(decompress(&z, len).unwrap(), body);
        }
        assert_eq!(window_log(1), 10);
        assert_eq!(window_log(1 << 25), 25);
        assert_eq!(window_log((1 << 25) + 1), 26);
        assert_eq!(window_log(usize::MAX), 31);
    }

    #[test]
    fn a_body_that_decompresses_past_the_limit_is_too_large() {
        let bomb = zstd::bulk::compress(&vec![0u8; 10_000_000], 3).unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            decompress(&bomb, 1_000_000),
            Err(DecodeError::TooLarge)
        ));
        assert_eq!(decompress(&bomb, 10_000_000).unwrap().len(), 10_000_000);
    }

    #[test]
    fn garbage_and_truncated_zstd_are_malformed() {
        assert!(matches!(
            decompress(b"not zstd at all", 1000),
            Err(DecodeError::Malformed(_))
        ));
        let z = zstd::bulk::compress(&vec![7u8; 100_000], 1).unwrap();
        assert!(matches!(
            decompress(&z[..z.len() / 2], 1_000_000),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn paths_carry_the_version() {
        assert_eq!(path("push"), "/v1/push");
    }
}
