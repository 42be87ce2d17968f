//! What the capture triggers of every dialect share: the tables they name,
//! the marker insert each one extends with its own upsert clause, and the
//! per-event triggers of the dialects without a statement-level `TG_OP`.
//!
//! A marker says "the row with this key was written". Its `gone` column says
//! that a row with this key stopped existing since the last capture (a
//! delete, or an update that moved the row to another key): if a row with
//! the key exists at capture, it is a new row, sent whole as an insert, so
//! that it wins over a concurrent delete elsewhere even when its values
//! equal the old row's. `gone` holds the marker version at which the row
//! went (0: it did not), so a capture that sealed the marker at a version
//! clears it only if no row went since (see `capture`).

/// The tables a table's capture triggers touch, and how its triggers are
/// named (the replica owns these names).
pub(crate) struct Capture<'a> {
    /// The synced table.
    pub(crate) table: super::Place<'a>,
    /// Its key columns, in key order.
    pub(crate) keys: Vec<&'a str>,
    /// Its unique column sets other than the key, for the dialects where a
    /// `REPLACE` deletes the rows holding a unique value without firing
    /// delete triggers (SQLite).
    pub(crate) uniques: &'a [Vec<String>],
    /// Its dirty-marker table.
    pub(crate) markers: &'a str,
    /// The table of sessions applying pulled changes.
    pub(crate) applying: &'a str,
    /// The schema of tidesync's tables (the markers, the applying
    /// sessions), where the dialect has schemas: a trigger names them
    /// with it, so that it finds them whatever the search path of the
    /// session that writes (an application whose tables are in a schema of
    /// their own may not have tidesync's in its path).
    pub(crate) home: Option<&'a str>,
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

/// Whether a marked row image stopped existing under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gone {
    /// No: an insert's or an update's new row.
    No,
    /// Yes: a deleted row.
    Yes,
    /// An update's old row: when the update changed the key.
    IfKeyChanged,
}

/// The row images an event marks (`NEW`, `OLD`), each with its `gone`.
type Images = &'static [(&'static str, Gone)];

/// The write events of per-event triggers: (event, name suffix, row
/// images to mark). An update can change the key: it marks the old and the
/// new row.
pub(crate) const EVENTS: [(&str, &str, Images); 3] = [
    ("INSERT", "ins", &[("NEW", Gone::No)]),
    (
        "UPDATE",
        "upd",
        &[("OLD", Gone::IfKeyChanged), ("NEW", Gone::No)],
    ),
    ("DELETE", "del", &[("OLD", Gone::Yes)]),
];

impl Capture<'_> {
    /// One of tidesync's tables (`markers`, `applying`) as a trigger names
    /// it, with identifiers quoted by `q`.
    pub(crate) fn own(&self, table: &str, q: impl Fn(&str) -> String) -> String {
        match self.home {
            Some(home) => format!("{}.{}", q(home), q(table)),
            None => q(table),
        }
    }

    /// The SQL value (0 or 1) of a row image's `gone` flag, with
    /// identifiers quoted by `q`.
    pub(crate) fn gone(&self, gone: Gone, q: impl Fn(&str) -> String) -> String {
        match gone {
            Gone::No => "0".into(),
            Gone::Yes => "1".into(),
            Gone::IfKeyChanged => format!("CASE WHEN {} THEN 0 ELSE 1 END", self.same_key(q)),
        }
    }

    /// `OLD.k1 = NEW.k1 AND ...`: whether an update kept the key.
    pub(crate) fn same_key(&self, q: impl Fn(&str) -> String) -> String {
        let same: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("OLD.{0} = NEW.{0}", q(k)))
            .collect();
        same.join(" AND ")
    }
}

/// `INSERT INTO markers (keys, ver, wall_us, gone) VALUES (row.keys, 1,
/// now, gone)`: the start of the marker upsert for the row image `row`
/// (`NEW` or `OLD`), with identifiers quoted by `q` and `gone` the SQL of
/// its flag (1, the first version, if the row went; else 0). Each dialect
/// appends its upsert clause.
pub(crate) fn marker_insert(
    c: &Capture<'_>,
    row: &str,
    gone: &str,
    q: impl Fn(&str) -> String,
    now_us: &str,
) -> String {
    let keys: Vec<String> = c.keys.iter().map(|k| q(k)).collect();
    let vals: Vec<String> = c.keys.iter().map(|k| format!("{row}.{}", q(k))).collect();
    format!(
        "INSERT INTO {} ({}, {}, {}, {}) VALUES ({}, 1, {now_us}, {gone})",
        c.own(c.markers, &q),
        keys.join(", "),
        q("ver"),
        q("wall_us"),
        q("gone"),
        vals.join(", "),
    )
}

/// How a dialect's `ON CONFLICT` marker upsert names things.
pub(crate) struct Upsert<'a> {
    /// The current time in microseconds.
    pub(crate) now_us: &'a str,
    /// A column of the existing marker row.
    pub(crate) existing: &'a dyn Fn(&str) -> String,
    /// The row that was to be inserted (`excluded`).
    pub(crate) excluded: &'a str,
}

/// The `ON CONFLICT` form of the marker upsert: [`marker_insert`], then
/// [`on_conflict`].
pub(crate) fn marker_upsert(
    c: &Capture<'_>,
    row: &str,
    gone: &str,
    q: impl Fn(&str) -> String + Copy,
    u: &Upsert<'_>,
) -> String {
    format!(
        "{} {}",
        marker_insert(c, row, gone, q, u.now_us),
        on_conflict(c, q, u)
    )
}

/// `ON CONFLICT (keys) DO UPDATE SET ...` of the marker upsert: the next
/// version, the new wall time, and `gone` set to the new version if the row
/// went, else kept.
pub(crate) fn on_conflict(c: &Capture<'_>, q: impl Fn(&str) -> String, u: &Upsert<'_>) -> String {
    let keys: Vec<String> = c.keys.iter().map(|k| q(k)).collect();
    let (ver, wall, gone) = (q("ver"), q("wall_us"), q("gone"));
    format!(
        "ON CONFLICT ({}) DO UPDATE SET {ver} = {old_ver} + 1, {wall} = {x}.{wall}, \
         {gone} = CASE WHEN {x}.{gone} > 0 THEN {old_ver} + 1 ELSE {} END",
        keys.join(", "),
        (u.existing)("gone"),
        old_ver = (u.existing)("ver"),
        x = u.excluded,
    )
}

/// The marker upserts of each event's row images, each line indented by
/// `indent` and ended by `;\n`. `mark` makes the upsert of a row image
/// with the SQL of its `gone` flag.
pub(crate) fn per_event<'c>(
    c: &'c Capture<'_>,
    q: impl Fn(&str) -> String + Copy + 'c,
    mark: impl Fn(&str, &str) -> String + 'c,
    indent: &'c str,
) -> impl Iterator<Item = (&'static str, &'static str, String)> + 'c {
    EVENTS.into_iter().map(move |(event, suffix, rows)| {
        let body: String = rows
            .iter()
            .map(|(r, gone)| format!("{indent}{};\n", mark(r, &c.gone(*gone, q))))
            .collect();
        (event, suffix, body)
    })
}
