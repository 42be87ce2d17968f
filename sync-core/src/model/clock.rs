//! Hybrid logical clock: wall time in microseconds, a logical counter and the
//! node id, totally ordered, never going backwards.
//!
//! The clock's last value is persisted with every capture, so a restart or a
//! wall clock set back cannot make it run backwards: the physical part only
//! moves forward and the counter breaks ties within one microsecond.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::error::{Error, Result};

/// The identity of a replica: 16 random bytes, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    /// A fresh random node id.
    pub fn random() -> Self {
        NodeId(*uuid::Uuid::new_v4().as_bytes())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Write `bytes` as lower-case hex digits into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// Read hex digits (either case) into `out` (half as long).
fn unhex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if text.len() != 2 * out.len() {
        return None;
    }
    for (pair, b) in text.chunks_exact(2).zip(out.iter_mut()) {
        *b = 16 * digit(pair[0])? + digit(pair[1])?;
    }
    Some(())
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 32];
        hex_into(&self.0, &mut out);
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 16];
        unhex_into(s.as_bytes(), &mut out)
            .ok_or_else(|| Error::Corrupt(format!("`{s}` is not a node id (32 hex digits)")))?;
        Ok(NodeId(out))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

/// A hybrid-logical-clock timestamp.
///
/// Ordered by physical time, then counter, then node id, so two timestamps
/// from different nodes are never equal. Its text form
/// (`{physical:016x}-{logical:08x}-{node}`) sorts the same way, which lets the
/// databases compare timestamps as strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Microseconds since the Unix epoch (at least the wall time it was made).
    pub physical: u64,
    /// Counter that orders events within one microsecond.
    pub logical: u32,
    /// The node that made the timestamp.
    pub node: NodeId,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `{physical:016x}-{logical:08x}-{node}`, without the formatting
        // machinery: clocks are written for every column of every row.
        let mut out = [b'-'; 58];
        hex_into(&self.physical.to_be_bytes(), &mut out[..16]);
        hex_into(&self.logical.to_be_bytes(), &mut out[17..25]);
        hex_into(&self.node.0, &mut out[26..]);
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Hlc {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        // `{physical:016x}-{logical:08x}-{node}`: 58 bytes.
        let parse = |t: &[u8]| {
            let [p, l, n] = [t.get(..16)?, t.get(17..25)?, t.get(26..)?];
            if t.len() != 58 || t[16] != b'-' || t[25] != b'-' {
                return None;
            }
            let (mut physical, mut logical, mut node) = ([0u8; 8], [0u8; 4], [0u8; 16]);
            unhex_into(p, &mut physical)?;
            unhex_into(l, &mut logical)?;
            unhex_into(n, &mut node)?;
            Some(Hlc {
                physical: u64::from_be_bytes(physical),
                logical: u32::from_be_bytes(logical),
                node: NodeId(node),
            })
        };
        parse(s.as_bytes())
            .ok_or_else(|| Error::Corrupt(format!("`{s}` is not a hybrid logical clock value")))
    }
}

impl Serialize for Hlc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Hlc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_text(d)
    }
}

/// A value read from its text form (`FromStr`), as `NodeId` and `Hlc` are
/// serialised.
fn from_text<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    // Parsed where the deserializer holds it: no copy of its text.
    struct Text<T>(std::marker::PhantomData<T>);
    impl<T: FromStr> serde::de::Visitor<'_> for Text<T>
    where
        T::Err: fmt::Display,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<T, E> {
            s.parse().map_err(E::custom)
        }
    }
    d.deserialize_str(Text(std::marker::PhantomData))
}

/// The current wall time in microseconds since the Unix epoch.
pub(crate) fn wall_clock_us() -> u64 {
    let now = chrono::Utc::now();
    u64::try_from(now.timestamp_micros()).unwrap_or(0)
}

/// A node's hybrid logical clock. Pure state: the caller supplies wall time
/// and persists [`HlcClock::last`].
#[derive(Clone, Debug)]
pub(crate) struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock for `node` that resumes after `last` (the persisted value).
    pub(crate) fn new(node: NodeId, last: Option<Hlc>) -> Self {
        let last = last.map_or(
            Hlc {
                physical: 0,
                logical: 0,
                node,
            },
            |h| Hlc { node, ..h },
        );
        HlcClock { last }
    }

    /// The last timestamp issued or observed.
    pub(crate) fn last(&self) -> Hlc {
        self.last
    }

    /// Issue a timestamp for a local event whose wall time was `wall_us`.
    /// Always greater than every timestamp issued or observed before.
    pub(crate) fn tick(&mut self, wall_us: u64) -> Hlc {
        self.advance(wall_us);
        self.last
    }

    /// Merge a timestamp received from another node, so that every later
    /// local timestamp orders after it.
    pub(crate) fn observe(&mut self, remote: Hlc, wall_us: u64) {
        (self.last.physical, self.last.logical) = Ord::max(
            (self.last.physical, self.last.logical),
            (remote.physical, remote.logical),
        );
        self.advance(wall_us);
    }

    fn advance(&mut self, wall_us: u64) {
        if wall_us > self.last.physical {
            self.last.physical = wall_us;
            self.last.logical = 0;
        } else if self.last.logical == u32::MAX {
            self.last.physical += 1;
            self.last.logical = 0;
        } else {
            self.last.logical += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 16])
    }

    #[test]
    fn ticks_are_strictly_increasing_when_wall_time_goes_back() {
        let mut c = HlcClock::new(node(1), None);
        let a = c.tick(1_000);
        let b = c.tick(500); // wall clock set back
        let d = c.tick(1_000);
        assert!(a < b && b < d, "{a} {b} {d}");
        assert_eq!(b.physical, 1_000);
        assert_eq!(d.logical, 2);
    }

    #[test]
    fn resumes_after_persisted_value() {
        let mut c = HlcClock::new(node(1), None);
        let before_restart = c.tick(5_000);
        let mut c = HlcClock::new(node(1), Some(before_restart));
        assert!(c.tick(10) > before_restart);
    }

    #[test]
    fn observe_orders_later_events_after_remote() {
        let mut c = HlcClock::new(node(1), None);
        let remote = Hlc {
            physical: 9_000,
            logical: 7,
            node: node(2),
        };
        c.observe(remote, 100);
        let next = c.tick(100);
        assert!(next > remote);
        assert_eq!(next.node, node(1));
    }

    #[test]
    fn counter_overflow_moves_physical_forward() {
        let mut c = HlcClock::new(
            node(1),
            Some(Hlc {
                physical: 10,
                logical: u32::MAX,
                node: node(1),
            }),
        );
        let t = c.tick(0);
        assert_eq!((t.physical, t.logical), (11, 0));
    }

    #[test]
    fn text_form_round_trips_and_sorts_like_the_value() {
        let a = Hlc {
            physical: 0x10,
            logical: 2,
            node: node(3),
        };
        let b = Hlc {
            physical: 0x100,
            logical: 0,
            node: node(1),
        };
        assert_eq!(a.to_string().parse::<Hlc>().unwrap(), a);
        let c = Hlc {
            physical: 0x0123_4567_89ab_cdef,
            logical: 0xfedc_ba98,
            node: NodeId([0xa5; 16]),
        };
        assert_eq!(
            c.to_string(),
            format!("0123456789abcdef-fedcba98-{}", "a5".repeat(16))
        );
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert!("zz".parse::<Hlc>().is_err());
        assert!("0000000000000010-00000002-xyz".parse::<Hlc>().is_err());
    }

    #[test]
    fn random_node_ids_differ() {
        let (a, b) = (NodeId::random(), NodeId::random());
        assert_ne!(a, b);
        assert_ne!(a, NodeId::default());
    }

    const ID: NodeId = NodeId([
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x00, 0xff, 0x10, 0x0f, 0xa5, 0x5a, 0x7e,
        0xe7,
    ]);
    const ID_HEX: &str = "0123456789abcdef00ff100fa55a7ee7";

    #[test]
    fn a_node_id_is_written_as_32_lower_case_hex_digits() {
        assert_eq!(ID.to_string(), ID_HEX);
        assert_eq!(format!("{ID:?}"), format!("NodeId({ID_HEX})"));
        assert_eq!(ID_HEX.parse::<NodeId>().unwrap(), ID);
        assert_eq!(serde_json::to_string(&ID).unwrap(), format!("\"{ID_HEX}\""));
        assert_eq!(
            serde_json::from_str::<NodeId>(&format!("\"{ID_HEX}\"")).unwrap(),
            ID
        );
    }

    #[test]
    fn a_node_id_is_read_in_either_case() {
        let id = NodeId([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ]);
        let lower = "0123456789abcdeffedcba9876543210";
        assert_eq!(lower.parse::<NodeId>().unwrap(), id);
        assert_eq!(lower.to_uppercase().parse::<NodeId>().unwrap(), id);
        assert_eq!(
            "0123456789ABcdefFEDCBA9876543210"
                .parse::<NodeId>()
                .unwrap(),
            id
        );
        assert_eq!(id.to_string(), lower);
    }

    #[test]
    fn a_node_id_is_read_only_from_text() {
        let e = serde_json::from_str::<NodeId>("12").unwrap_err();
        assert!(e.to_string().contains("expected a string"), "{e}");
        let e = serde_json::from_str::<Hlc>("[1]").unwrap_err();
        assert!(e.to_string().contains("expected a string"), "{e}");
    }

    #[test]
    fn a_node_id_is_read_from_exactly_32_hex_digits() {
        for bad in [
            String::new(),
            ID_HEX[..30].to_owned(),
            format!("{ID_HEX}00"),
            ID_HEX.replace('a', "g"),
            // 32 bytes, not 32 digits (a character cut in two would panic).
            format!("{}é0", &ID_HEX[..29]),
            // A sign is no digit.
            format!("+1{}", &ID_HEX[2..]),
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?}");
            assert!(
                serde_json::from_str::<NodeId>(&format!("\"{bad}\"")).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_clock_is_read_only_in_its_fixed_width_form() {
        // Shorter fields would not sort as the value does.
        for bad in [
            format!("10-00000002-{ID_HEX}"),
            format!("0000000000000010-2-{ID_HEX}"),
            format!("00000000000000010-00000002-{ID_HEX}"),
            format!("0000000000000010-00000002-{ID_HEX}-00"),
            format!("+000000000000010-00000002-{ID_HEX}"),
            format!("0000000000000010-+0000002-{ID_HEX}"),
            format!("0000000000000010_00000002-{ID_HEX}"),
            format!("0000000000000010-00000002-{}é0", &ID_HEX[..29]),
            "é".repeat(29),
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad}");
        }
        let ok = format!("0000000000000010-00000002-{ID_HEX}");
        assert_eq!(
            ok.parse::<Hlc>().unwrap(),
            Hlc {
                physical: 0x10,
                logical: 2,
                node: ID,
            }
        );
    }

    #[test]
    fn wall_clock_is_now_in_microseconds() {
        let micros = || u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap();
        let before = micros();
        let t = wall_clock_us();
        let after = micros();
        assert!(before <= t && t <= after, "{before} {t} {after}");
    }

    #[test]
    fn last_is_the_latest_timestamp_issued_or_observed() {
        let persisted = Hlc {
            physical: 5,
            logical: 3,
            node: node(9),
        };
        // Resumed under this node's id.
        let mut c = HlcClock::new(node(1), Some(persisted));
        assert_eq!(
            c.last(),
            Hlc {
                node: node(1),
                ..persisted
            }
        );
        let t = c.tick(1);
        assert_eq!(c.last(), t);
        c.observe(
            Hlc {
                physical: 50,
                logical: 0,
                node: node(2),
            },
            10,
        );
        assert_eq!((c.last().physical, c.last().logical), (50, 1));
        assert_eq!(
            HlcClock::new(node(1), None).last(),
            Hlc {
                node: node(1),
                ..Hlc::default()
            }
        );
    }
}
