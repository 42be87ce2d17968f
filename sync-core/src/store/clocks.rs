//! A row's column clocks as stored: the clock most columns share once,
//! and only the columns whose clock differs. A row written by one insert
//! stores one clock instead of one per column.

use std::collections::BTreeMap;

use crate::model::clock::Hlc;
use crate::model::error::Result;

/// The key under which [`encode`] stores the clock most columns share
/// (no column has an empty name).
pub(crate) const SHARED: &str = "";

/// Encode a row's column clocks: the clock most columns share once, under
/// the key `""`, and only the columns whose clock differs. A row written by
/// one insert stores one clock instead of one per column. (Written by the
/// tests only: the stores that keep this format are read, never written.)
#[cfg(test)]
pub(crate) fn encode(
    clocks: &BTreeMap<String, Hlc>,
    vals: &BTreeMap<String, sea_orm::Value>,
) -> Result<String> {
    // The most common clock among columns that have a value (sorted, so
    // equal clocks are neighbours; ties go to the earliest clock).
    let mut with_value: Vec<Hlc> = clocks
        .iter()
        .filter(|(c, _)| vals.contains_key(*c))
        .map(|(_, h)| *h)
        .collect();
    with_value.sort_unstable();
    let mut shared: Option<(Hlc, usize)> = None;
    for run in with_value.chunk_by(|a, b| a == b) {
        if shared.is_none_or(|(_, best)| run.len() > best) {
            shared = Some((run[0], run.len()));
        }
    }
    let Some((shared, n)) = shared.filter(|(_, n)| *n > 1) else {
        return Ok(serde_json::to_string(clocks)?);
    };
    let mut out: BTreeMap<&str, Hlc> = BTreeMap::new();
    out.insert(SHARED, shared);
    for (c, h) in clocks {
        if *h != shared || !vals.contains_key(c) {
            out.insert(c, *h);
        }
    }
    debug_assert!(out.len() + n == clocks.len() + 1);
    Ok(serde_json::to_string(&out)?)
}

/// Decode [`encode`] (or a plain map of column clocks).
pub(crate) fn decode(
    text: &str,
    vals: &BTreeMap<String, sea_orm::Value>,
) -> Result<BTreeMap<String, Hlc>> {
    let mut clocks: BTreeMap<String, Hlc> = serde_json::from_str(text)?;
    if let Some(shared) = clocks.remove(SHARED) {
        for c in vals.keys() {
            clocks.entry(c.clone()).or_insert(shared);
        }
    }
    Ok(clocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing;

    #[test]
    fn one_insert_stores_one_clock() {
        let (clocks, vals) = testing::clocked(&[("a", 5), ("b", 5), ("c", 5), ("d", 5)]);
        let text = encode(&clocks, &vals).unwrap();
        assert_eq!(text.matches('-').count(), 2, "one clock: {text}");
        assert_eq!(decode(&text, &vals).unwrap(), clocks);
    }

    #[test]
    fn columns_with_other_clocks_are_listed() {
        let (clocks, vals) =
            testing::clocked(&[("a", 5), ("b", 9), ("c", 5), ("d", 7), ("e", 9), ("f", 9)]);
        let text = encode(&clocks, &vals).unwrap();
        let raw: BTreeMap<String, Hlc> = serde_json::from_str(&text).unwrap();
        assert_eq!(raw[""], testing::hlc(9, 7), "{text}");
        assert_eq!(raw.len(), 4, "{text}");
        assert_eq!(decode(&text, &vals).unwrap(), clocks);
    }

    /// Two clocks each shared by as many columns: the earlier one is
    /// stored once under `""`, so the text is the same on every replica.
    #[test]
    fn a_tie_of_shared_clocks_goes_to_the_earlier() {
        let (clocks, vals) = testing::clocked(&[("a", 5), ("b", 5), ("c", 9), ("d", 9)]);
        let text = encode(&clocks, &vals).unwrap();
        let stored: BTreeMap<String, Hlc> = serde_json::from_str(&text).unwrap();
        assert_eq!(stored.get(""), Some(&testing::hlc(5, 7)), "{text}");
        assert_eq!(stored.keys().collect::<Vec<_>>(), ["", "c", "d"]);
        assert_eq!(decode(&text, &vals).unwrap(), clocks);
    }

    #[test]
    fn distinct_clocks_and_empty_states_round_trip() {
        for cols in [&[][..], &[("a", 1)], &[("a", 1), ("b", 2)]] {
            let (clocks, vals) = testing::clocked(cols);
            let text = encode(&clocks, &vals).unwrap();
            assert!(!text.contains("\"\""), "{text}");
            assert_eq!(decode(&text, &vals).unwrap(), clocks);
        }
    }

    #[test]
    fn a_clock_without_a_value_is_kept_apart() {
        let (mut clocks, vals) = testing::clocked(&[("a", 5), ("b", 5)]);
        clocks.insert("gone".into(), testing::hlc(5, 7));
        let text = encode(&clocks, &vals).unwrap();
        assert_eq!(decode(&text, &vals).unwrap(), clocks);
    }

    #[test]
    fn the_plain_map_of_earlier_releases_is_read() {
        let (clocks, vals) = testing::clocked(&[("a", 5), ("b", 5)]);
        let old = serde_json::to_string(&clocks).unwrap();
        assert_eq!(decode(&old, &vals).unwrap(), clocks);
    }
}
