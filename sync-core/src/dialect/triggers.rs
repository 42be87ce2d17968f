//! What the capture triggers of every dialect share: the tables they name,
//! the marker insert each one extends with its own upsert clause, and the
//! per-event triggers of the dialects without a statement-level `TG_OP`.

/// The tables a table's capture triggers touch, and how its triggers are
/// named (the replica owns these names).
pub(crate) struct Capture<'a> {
    /// The synced table.
    pub(crate) table: &'a str,
    /// Its key columns, in key order.
    pub(crate) keys: Vec<&'a str>,
    /// Its dirty-marker table.
    pub(crate) markers: &'a str,
    /// The table of sessions applying pulled changes.
    pub(crate) applying: &'a str,
    /// The name of the trigger (or trigger function) with this suffix.
    pub(crate) name: &'a dyn Fn(&str) -> String,
}

/// One statement of a table's capture triggers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Trigger {
    /// The trigger (or function) it creates.
    pub(crate) name: String,
    /// The statement.
    pub(crate) sql: String,
}

/// The write events of per-event triggers: (event, name suffix, row
/// images to mark). An update can change the key: it marks the old and the
/// new row.
pub(crate) const EVENTS: [(&str, &str, &[&str]); 3] = [
    ("INSERT", "ins", &["NEW"]),
    ("UPDATE", "upd", &["OLD", "NEW"]),
    ("DELETE", "del", &["OLD"]),
];

/// `INSERT INTO markers (keys, ver, wall_us) VALUES (row.keys, 1, now)`:
/// the start of the marker upsert for the row image `row` (`NEW` or `OLD`),
/// with identifiers quoted by `q`. Each dialect appends its upsert clause.
pub(crate) fn marker_insert(
    c: &Capture<'_>,
    row: &str,
    q: impl Fn(&str) -> String,
    now_us: &str,
) -> String {
    let keys: Vec<String> = c.keys.iter().map(|k| q(k)).collect();
    let vals: Vec<String> = c.keys.iter().map(|k| format!("{row}.{}", q(k))).collect();
    format!(
        "INSERT INTO {} ({}, {}, {}) VALUES ({}, 1, {now_us})",
        q(c.markers),
        keys.join(", "),
        q("ver"),
        q("wall_us"),
        vals.join(", "),
    )
}

/// The `ON CONFLICT` form of the marker upsert: [`marker_insert`], then
/// on an existing marker `ver = <existing> + 1` (`existing`: how the
/// dialect names the existing row's `ver`) and the new wall time (from the
/// row `excluded` names).
pub(crate) fn marker_upsert(
    c: &Capture<'_>,
    row: &str,
    q: impl Fn(&str) -> String + Copy,
    now_us: &str,
    existing: &str,
    excluded: &str,
) -> String {
    let keys: Vec<String> = c.keys.iter().map(|k| q(k)).collect();
    let (ver, wall) = (q("ver"), q("wall_us"));
    format!(
        "{} ON CONFLICT ({}) DO UPDATE SET {ver} = {existing} + 1, {wall} = {excluded}.{wall}",
        marker_insert(c, row, q, now_us),
        keys.join(", ")
    )
}

/// The marker upserts of each event's row images, each line indented by
/// `indent` and ended by `;\n`.
pub(crate) fn per_event(
    mark: impl Fn(&str) -> String,
    indent: &str,
) -> impl Iterator<Item = (&'static str, &'static str, String)> {
    EVENTS.into_iter().map(move |(event, suffix, rows)| {
        let body: String = rows
            .iter()
            .map(|r| format!("{indent}{};\n", mark(r)))
            .collect();
        (event, suffix, body)
    })
}
