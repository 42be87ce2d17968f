//! Row states in binary (a replica's since schema version 2): the bytes of the
//! `clocks`, `del` and `vals` columns of a version table, one per synced
//! table (see `version_table`). Pure code, no I/O.
//!
//! Format 1 kept every state as typed JSON in one shared table: per row a
//! JSON map of values and a JSON map of 58-character clocks, under the
//! key's text. Writing and reading those was most of what capture and
//! pulls cost. Here a state is three byte strings:
//!
//! - `clocks`: the clock most columns share, once, with the ordinals (2
//!   bytes each) of the columns that have it, then each other column's
//!   ordinal and clock ([`CLOCK_BYTES`]; see `encode_clocks`): a row
//!   written by one insert stores one clock;
//! - `del`: the clock of the row's latest delete, or NULL;
//! - `vals`: per column that has a value, in ordinal order, its ordinal
//!   and the value (a type tag, then fixed-width bytes or a length and
//!   bytes; a type without a binary form here is its typed JSON).
//!
//! A column's ordinal is its place in the table's append-only register
//! (`_tidesync_columns`): a state keeps its columns when the entity gains
//! or drops some, and a column this process does not know (another
//! release added it) keeps its clock and value.
//!
//! All integers are big-endian; a decimal is rust_decimal's own 16 bytes
//! (`Decimal::serialize`). The encoding is part of the stored format: the
//! tests below pin it byte for byte.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use sea_orm::Value;

use crate::model::change::ColumnSpec;
use crate::model::clock::{Hlc, NodeId};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::typed;

/// Bytes of one clock: wall microseconds (8), counter (4), node id (16).
pub(crate) const CLOCK_BYTES: usize = 28;

/// Append `h` to `out`.
pub(crate) fn put_clock(h: &Hlc, out: &mut Vec<u8>) {
    out.extend_from_slice(&h.physical.to_be_bytes());
    out.extend_from_slice(&h.logical.to_be_bytes());
    out.extend_from_slice(&h.node.0);
}

/// The clock in the first [`CLOCK_BYTES`] of `b`.
pub(crate) fn get_clock(b: &[u8]) -> Result<Hlc> {
    let b = b
        .get(..CLOCK_BYTES)
        .ok_or_else(|| corrupt("a clock cut short"))?;
    let mut node = [0u8; 16];
    node.copy_from_slice(&b[12..28]);
    Ok(Hlc {
        physical: u64::from_be_bytes(b[0..8].try_into().expect("8 bytes")),
        logical: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
        node: NodeId(node),
    })
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("version row: {what}"))
}

/// The column ordinals of one table: name to ordinal and back; and, in a
/// register that records them (a hub's), each column's spec.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ordinals {
    by_name: FxHashMap<String, u16>,
    by_ord: BTreeMap<u16, String>,
    specs: FxHashMap<String, ColumnSpec>,
}

impl Ordinals {
    /// The register as read: `(column, ordinal)` pairs.
    pub(crate) fn new(pairs: impl IntoIterator<Item = (String, u16)>) -> Ordinals {
        let mut o = Ordinals::default();
        for (c, n) in pairs {
            o.by_ord.insert(n, c.clone());
            o.by_name.insert(c, n);
        }
        o
    }

    /// The register with each column's recorded spec, where one is
    /// (`specs`: the register's `spec` texts by column; a text that cannot
    /// be read is none, with a warning).
    pub(crate) fn with_specs(mut self, table: &str, specs: Vec<(String, String)>) -> Ordinals {
        for (column, text) in specs {
            match serde_json::from_str::<ColumnSpec>(&text) {
                Ok(spec) if spec.name == column => {
                    self.specs.insert(column, spec);
                }
                Ok(_) | Err(_) => tracing::warn!(
                    table,
                    column,
                    spec = text,
                    "the register records a column spec that cannot be read: taken as none"
                ),
            }
        }
        self
    }

    /// The registered columns' names, in ordinal order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_ord.values().map(String::as_str)
    }

    /// The spec the register records for `column`, if any.
    pub(crate) fn spec(&self, column: &str) -> Option<&ColumnSpec> {
        self.specs.get(column)
    }

    pub(crate) fn of(&self, column: &str) -> Option<u16> {
        self.by_name.get(column).copied()
    }

    fn name(&self, ord: u16) -> Result<&str> {
        self.by_ord
            .get(&ord)
            .map(String::as_str)
            .ok_or_else(|| corrupt(&format!("column ordinal {ord} is not registered")))
    }

    /// The next free ordinal.
    pub(crate) fn next(&self) -> Result<u16> {
        match self.by_ord.last_key_value() {
            None => Ok(1),
            Some((n, _)) => n
                .checked_add(1)
                .ok_or_else(|| Error::Config("a table has more than 65535 columns".into())),
        }
    }

    /// The columns of `states` that have no ordinal yet, each once.
    pub(crate) fn missing<'a>(&self, states: impl Iterator<Item = &'a RowState>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in states {
            for c in s.clocks.keys().chain(s.vals.keys()) {
                if !self.by_name.contains_key(c) && !out.contains(c) {
                    out.push(c.clone());
                }
            }
        }
        out
    }
}

/// A state as its version row holds it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Encoded {
    pub(crate) clocks: Vec<u8>,
    pub(crate) del: Option<Vec<u8>>,
    pub(crate) vals: Vec<u8>,
    pub(crate) live: bool,
}

/// Encode `state`.
///
/// # Errors
/// [`Error::Corrupt`] when one of its columns has no ordinal in `ords`
/// (register them first, see [`Ordinals::missing`]).
pub(crate) fn encode(state: &RowState, ords: &Ordinals) -> Result<Encoded> {
    let ordinal = |c: &str| {
        ords.of(c)
            .ok_or_else(|| corrupt(&format!("column `{c}` has no ordinal")))
    };
    let mut clocks: Vec<(u16, &Hlc)> = Vec::with_capacity(state.clocks.len());
    for (c, h) in &state.clocks {
        clocks.push((ordinal(c)?, h));
    }
    // Values mostly come for the columns that have clocks, both in name
    // order: take their ordinals from the clocks' as the two go along.
    let mut clocked = state.clocks.keys().zip(&clocks).peekable();
    let mut vals: Vec<(u16, &Value)> = Vec::with_capacity(state.vals.len());
    for (c, v) in &state.vals {
        while clocked.next_if(|(k, _)| *k < c).is_some() {}
        let n = match clocked.next_if(|(k, _)| *k == c) {
            Some((_, (n, _))) => *n,
            None => ordinal(c)?,
        };
        vals.push((n, v));
    }
    clocks.sort_unstable_by_key(|(n, _)| *n);
    let c = encode_clocks(&clocks);
    vals.sort_unstable_by_key(|(n, _)| *n);
    let mut v = Vec::new();
    for (n, value) in vals {
        v.extend_from_slice(&n.to_be_bytes());
        put_value(value, &mut v)?;
    }
    Ok(Encoded {
        clocks: c,
        del: encode_del(state),
        vals: v,
        live: state.is_live(),
    })
}

/// The `clocks` and `del` bytes of `state`, as [`encode`] makes them,
/// without its values.
///
/// # Errors
/// As [`encode`].
pub(crate) fn encode_clocks_of(
    state: &RowState,
    ords: &Ordinals,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut clocks: Vec<(u16, &Hlc)> = Vec::with_capacity(state.clocks.len());
    for (c, h) in &state.clocks {
        let n = ords
            .of(c)
            .ok_or_else(|| corrupt(&format!("column `{c}` has no ordinal")))?;
        clocks.push((n, h));
    }
    clocks.sort_unstable_by_key(|(n, _)| *n);
    Ok((encode_clocks(&clocks), encode_del(state)))
}

/// The forms of `state`'s values that a database's column may not keep,
/// to give a value read back from a users' table the form it was pushed
/// in (see [`apply_forms`]): a decimal's scale (a `DECIMAL(p,s)` column
/// gives it back at the column's scale) and a date-time's offset (a
/// PostgreSQL `timestamptz` gives it back in UTC, a MySQL `DATETIME`
/// without one). `None` when the state holds no such value.
///
/// Layout: per value, its column's ordinal (2 bytes), a tag (1: a
/// decimal's scale, 1 byte; 2: an offset east of UTC in seconds, 4
/// bytes, signed).
///
/// # Errors
/// As [`encode`].
pub(crate) fn encode_forms(state: &RowState, ords: &Ordinals) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    for (c, v) in &state.vals {
        let form: Option<(u8, Vec<u8>)> = match v {
            Value::Decimal(Some(d)) => Some((1, vec![d.scale() as u8])),
            Value::ChronoDateTimeWithTimeZone(Some(t)) => {
                Some((2, t.offset().local_minus_utc().to_be_bytes().to_vec()))
            }
            _ => None,
        };
        if let Some((tag, bytes)) = form {
            let n = ords
                .of(c)
                .ok_or_else(|| corrupt(&format!("column `{c}` has no ordinal")))?;
            out.extend_from_slice(&n.to_be_bytes());
            out.push(tag);
            out.extend_from_slice(&bytes);
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Give the values of `vals` (by column name) the forms `forms` records
/// (see [`encode_forms`]): a decimal its scale where that loses no digit,
/// a date-time its offset. A form of a column `vals` lacks, or of another
/// kind than its value, is left alone.
///
/// # Errors
/// [`Error::Corrupt`] for bytes that are no forms, or an ordinal `ords`
/// does not hold.
pub(crate) fn apply_forms(
    forms: &[u8],
    ords: &Ordinals,
    vals: &mut BTreeMap<String, Value>,
) -> Result<()> {
    let mut at = 0;
    while at < forms.len() {
        let n = get_u16(forms, &mut at)?;
        let tag = take(forms, &mut at, 1)?[0];
        let name = ords.name(n)?;
        match tag {
            1 => {
                let scale = u32::from(take(forms, &mut at, 1)?[0]);
                if let Some(Value::Decimal(Some(d))) = vals.get_mut(name) {
                    let mut scaled = *d;
                    scaled.rescale(scale);
                    if scaled == *d {
                        *d = scaled;
                    }
                }
            }
            2 => {
                let secs = i32::from_be_bytes(take(forms, &mut at, 4)?.try_into().expect("4"));
                let offset = chrono::FixedOffset::east_opt(secs)
                    .ok_or_else(|| corrupt(&format!("an offset of {secs} s")))?;
                if let Some(Value::ChronoDateTimeWithTimeZone(Some(t))) = vals.get_mut(name) {
                    *t = t.with_timezone(&offset);
                }
            }
            t => return Err(corrupt(&format!("value form tag {t}"))),
        }
    }
    Ok(())
}

/// The `del` bytes of `state`: its delete clock, if any.
fn encode_del(state: &RowState) -> Option<Vec<u8>> {
    state.deleted_at.map(|d| {
        let mut b = Vec::with_capacity(CLOCK_BYTES);
        put_clock(&d, &mut b);
        b
    })
}

/// The `clocks` bytes of columns (ordinal, clock) in ordinal order: the
/// clock most of them share once, with the ordinals that have it, then
/// each other column's ordinal and clock. A row written by one insert (or
/// pulled whole) stores one clock.
///
/// Layout: the number of columns sharing the clock (2 bytes; 0 when no
/// two columns share one), their ordinals (2 bytes each), the shared clock
/// if any, then (ordinal, clock) pairs to the end.
fn encode_clocks(clocks: &[(u16, &Hlc)]) -> Vec<u8> {
    // The most common clock (ties: the earliest), if two columns share it.
    let mut sorted: Vec<&Hlc> = clocks.iter().map(|(_, h)| *h).collect();
    sorted.sort_unstable();
    let mut shared: Option<(&Hlc, usize)> = None;
    for run in sorted.chunk_by(|a, b| a == b) {
        if shared.is_none_or(|(_, n)| run.len() > n) {
            shared = Some((run[0], run.len()));
        }
    }
    let shared = shared.filter(|(_, n)| *n > 1).map(|(h, _)| h);
    let mut c = Vec::with_capacity(clocks.len() * (2 + CLOCK_BYTES));
    let with_shared: Vec<u16> = clocks
        .iter()
        .filter(|(_, h)| Some(*h) == shared)
        .map(|(n, _)| *n)
        .collect();
    c.extend_from_slice(&(with_shared.len() as u16).to_be_bytes());
    for n in &with_shared {
        c.extend_from_slice(&n.to_be_bytes());
    }
    if let Some(h) = shared {
        put_clock(h, &mut c);
    }
    for (n, h) in clocks.iter().filter(|(_, h)| Some(*h) != shared) {
        c.extend_from_slice(&n.to_be_bytes());
        put_clock(h, &mut c);
    }
    c
}

/// The (ordinal, clock) pairs of [`encode_clocks`] bytes.
fn decode_clocks(b: &[u8]) -> Result<Vec<(u16, Hlc)>> {
    let mut at = 0;
    let mut out = Vec::new();
    if b.is_empty() {
        return Ok(out);
    }
    let n = get_u16(b, &mut at)? as usize;
    if n > 0 {
        let mut ords = Vec::with_capacity(n);
        for _ in 0..n {
            ords.push(get_u16(b, &mut at)?);
        }
        let h = get_clock(take(b, &mut at, CLOCK_BYTES)?)?;
        out.extend(ords.into_iter().map(|o| (o, h)));
    }
    while at < b.len() {
        let o = get_u16(b, &mut at)?;
        let h = get_clock(take(b, &mut at, CLOCK_BYTES)?)?;
        out.push((o, h));
    }
    Ok(out)
}

/// Decode the columns of a version row.
pub(crate) fn decode(
    clocks: &[u8],
    del: Option<&[u8]>,
    vals: &[u8],
    ords: &Ordinals,
) -> Result<RowState> {
    let mut state = RowState::default();
    for (n, h) in decode_clocks(clocks)? {
        state.clocks.insert(ords.name(n)?.to_owned(), h);
    }
    let mut at = 0;
    while at < vals.len() {
        let n = get_u16(vals, &mut at)?;
        let v = get_value(vals, &mut at)?;
        state.vals.insert(ords.name(n)?.to_owned(), v);
    }
    state.deleted_at = del.map(get_clock).transpose()?;
    Ok(state)
}

/// A row's column clocks by name, and its delete clock.
pub(crate) type RowClocks = (Vec<(String, Hlc)>, Option<Hlc>);

/// The column clocks (by name) and delete clock that `clocks` and `del`
/// hold (a users' row's metadata; see [`encode_clocks_of`]), or `None`
/// when a clock's ordinal is not in `ords` (a column registered after
/// `ords` was read).
///
/// # Errors
/// [`Error::Corrupt`] for bytes that are no clocks.
pub(crate) fn decode_row_clocks(
    clocks: &[u8],
    del: Option<&[u8]>,
    ords: &Ordinals,
) -> Result<Option<RowClocks>> {
    let mut out = Vec::new();
    for (n, h) in decode_clocks(clocks)? {
        match ords.by_ord.get(&n) {
            Some(name) => out.push((name.clone(), h)),
            None => return Ok(None),
        }
    }
    Ok(Some((out, del.map(get_clock).transpose()?)))
}

fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
    let end = at
        .checked_add(n)
        .filter(|e| *e <= b.len())
        .ok_or_else(|| corrupt("a value cut short"))?;
    let out = &b[*at..end];
    *at = end;
    Ok(out)
}

fn get_u16(b: &[u8], at: &mut usize) -> Result<u16> {
    Ok(u16::from_be_bytes(take(b, at, 2)?.try_into().expect("2")))
}

fn get_u32(b: &[u8], at: &mut usize) -> Result<u32> {
    Ok(u32::from_be_bytes(take(b, at, 4)?.try_into().expect("4")))
}

/// Type tags of the binary value forms. A tag with [`NULL`] set is the
/// type's NULL, with no bytes after it.
mod tag {
    pub(super) const BOOL: u8 = 1;
    pub(super) const TINY_INT: u8 = 2;
    pub(super) const SMALL_INT: u8 = 3;
    pub(super) const INT: u8 = 4;
    pub(super) const BIG_INT: u8 = 5;
    pub(super) const TINY_UNSIGNED: u8 = 6;
    pub(super) const SMALL_UNSIGNED: u8 = 7;
    pub(super) const UNSIGNED: u8 = 8;
    pub(super) const BIG_UNSIGNED: u8 = 9;
    pub(super) const FLOAT: u8 = 10;
    pub(super) const DOUBLE: u8 = 11;
    pub(super) const STRING: u8 = 12;
    pub(super) const CHAR: u8 = 13;
    pub(super) const BYTES: u8 = 14;
    pub(super) const UUID: u8 = 15;
    pub(super) const DATE: u8 = 16;
    pub(super) const TIME: u8 = 17;
    pub(super) const DATE_TIME: u8 = 18;
    pub(super) const DATE_TIME_UTC: u8 = 19;
    pub(super) const DECIMAL: u8 = 20;
    /// Any other value: its typed JSON, with a length.
    pub(super) const TYPED: u8 = 127;
    /// Set on a tag: the type's NULL.
    pub(super) const NULL: u8 = 128;
}

fn put_len(out: &mut Vec<u8>, n: usize) -> Result<()> {
    let n = u32::try_from(n).map_err(|_| Error::Config("a value over 4 GiB".into()))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// Seconds and nanoseconds of a date-time since the epoch, as 12 bytes.
fn put_instant(secs: i64, nanos: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&secs.to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
}

/// Append the binary form of `v`.
pub(crate) fn put_value(v: &Value, out: &mut Vec<u8>) -> Result<()> {
    macro_rules! fixed {
        ($tag:expr, $x:expr, $bytes:expr) => {
            match $x {
                Some(x) => {
                    out.push($tag);
                    out.extend_from_slice(&$bytes(x));
                }
                None => out.push($tag | tag::NULL),
            }
        };
    }
    match v {
        Value::Bool(x) => fixed!(tag::BOOL, x, |b: &bool| [u8::from(*b)]),
        Value::TinyInt(x) => fixed!(tag::TINY_INT, x, |n: &i8| n.to_be_bytes()),
        Value::SmallInt(x) => fixed!(tag::SMALL_INT, x, |n: &i16| n.to_be_bytes()),
        Value::Int(x) => fixed!(tag::INT, x, |n: &i32| n.to_be_bytes()),
        Value::BigInt(x) => fixed!(tag::BIG_INT, x, |n: &i64| n.to_be_bytes()),
        Value::TinyUnsigned(x) => fixed!(tag::TINY_UNSIGNED, x, |n: &u8| n.to_be_bytes()),
        Value::SmallUnsigned(x) => fixed!(tag::SMALL_UNSIGNED, x, |n: &u16| n.to_be_bytes()),
        Value::Unsigned(x) => fixed!(tag::UNSIGNED, x, |n: &u32| n.to_be_bytes()),
        Value::BigUnsigned(x) => fixed!(tag::BIG_UNSIGNED, x, |n: &u64| n.to_be_bytes()),
        Value::Float(x) => fixed!(tag::FLOAT, x, |f: &f32| f.to_bits().to_be_bytes()),
        Value::Double(x) => fixed!(tag::DOUBLE, x, |f: &f64| f.to_bits().to_be_bytes()),
        Value::Char(x) => fixed!(tag::CHAR, x, |c: &char| u32::from(*c).to_be_bytes()),
        Value::Uuid(x) => fixed!(tag::UUID, x, |u: &uuid::Uuid| *u.as_bytes()),
        Value::Decimal(x) => fixed!(tag::DECIMAL, x, |d: &rust_decimal::Decimal| d.serialize()),
        Value::ChronoDate(x) => {
            fixed!(tag::DATE, x, |d: &NaiveDate| d
                .num_days_from_ce()
                .to_be_bytes())
        }
        Value::String(Some(s)) => {
            out.push(tag::STRING);
            put_len(out, s.len())?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::String(None) => out.push(tag::STRING | tag::NULL),
        Value::Bytes(Some(b)) => {
            out.push(tag::BYTES);
            put_len(out, b.len())?;
            out.extend_from_slice(b);
        }
        Value::Bytes(None) => out.push(tag::BYTES | tag::NULL),
        Value::ChronoTime(Some(t)) => {
            out.push(tag::TIME);
            out.extend_from_slice(&t.num_seconds_from_midnight().to_be_bytes());
            out.extend_from_slice(&t.nanosecond().to_be_bytes());
        }
        Value::ChronoTime(None) => out.push(tag::TIME | tag::NULL),
        Value::ChronoDateTime(Some(t)) => {
            out.push(tag::DATE_TIME);
            let utc = t.and_utc();
            put_instant(utc.timestamp(), utc.timestamp_subsec_nanos(), out);
        }
        Value::ChronoDateTime(None) => out.push(tag::DATE_TIME | tag::NULL),
        Value::ChronoDateTimeUtc(Some(t)) => {
            out.push(tag::DATE_TIME_UTC);
            put_instant(t.timestamp(), t.timestamp_subsec_nanos(), out);
        }
        Value::ChronoDateTimeUtc(None) => out.push(tag::DATE_TIME_UTC | tag::NULL),
        other => {
            let text = typed::to_text(other)?;
            out.push(tag::TYPED);
            put_len(out, text.len())?;
            out.extend_from_slice(text.as_bytes());
        }
    }
    Ok(())
}

/// Read the value at `at` and move past it.
pub(crate) fn get_value(b: &[u8], at: &mut usize) -> Result<Value> {
    let t = take(b, at, 1)?[0];
    let null = t & tag::NULL != 0;
    let t = t & !tag::NULL;
    macro_rules! fixed {
        ($variant:ident, $n:expr, $from:expr) => {{
            if null {
                Value::$variant(None)
            } else {
                let bytes: [u8; $n] = take(b, at, $n)?.try_into().expect("width");
                Value::$variant(Some($from(bytes)?))
            }
        }};
    }
    let v = match t {
        tag::BOOL => fixed!(Bool, 1, |b: [u8; 1]| match b[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(corrupt("a boolean other than 0 or 1")),
        }),
        tag::TINY_INT => fixed!(TinyInt, 1, |b| Ok::<_, Error>(i8::from_be_bytes(b))),
        tag::SMALL_INT => fixed!(SmallInt, 2, |b| Ok::<_, Error>(i16::from_be_bytes(b))),
        tag::INT => fixed!(Int, 4, |b| Ok::<_, Error>(i32::from_be_bytes(b))),
        tag::BIG_INT => fixed!(BigInt, 8, |b| Ok::<_, Error>(i64::from_be_bytes(b))),
        tag::TINY_UNSIGNED => fixed!(TinyUnsigned, 1, |b| Ok::<_, Error>(u8::from_be_bytes(b))),
        tag::SMALL_UNSIGNED => fixed!(SmallUnsigned, 2, |b| Ok::<_, Error>(u16::from_be_bytes(b))),
        tag::UNSIGNED => fixed!(Unsigned, 4, |b| Ok::<_, Error>(u32::from_be_bytes(b))),
        tag::BIG_UNSIGNED => fixed!(BigUnsigned, 8, |b| Ok::<_, Error>(u64::from_be_bytes(b))),
        tag::FLOAT => fixed!(Float, 4, |b| Ok::<_, Error>(f32::from_bits(
            u32::from_be_bytes(b)
        ))),
        tag::DOUBLE => fixed!(Double, 8, |b| Ok::<_, Error>(f64::from_bits(
            u64::from_be_bytes(b)
        ))),
        tag::CHAR => fixed!(Char, 4, |b| char::from_u32(u32::from_be_bytes(b))
            .ok_or_else(|| corrupt("a character that is not one"))),
        tag::UUID => fixed!(Uuid, 16, |b| Ok::<_, Error>(uuid::Uuid::from_bytes(b))),
        tag::DECIMAL => fixed!(Decimal, 16, |b| Ok::<_, Error>(
            rust_decimal::Decimal::deserialize(b)
        )),
        tag::DATE => fixed!(ChronoDate, 4, |b| NaiveDate::from_num_days_from_ce_opt(
            i32::from_be_bytes(b)
        )
        .ok_or_else(|| corrupt("a date out of range"))),
        tag::TIME => fixed!(ChronoTime, 8, |b: [u8; 8]| {
            let secs = u32::from_be_bytes(b[..4].try_into().expect("4"));
            let nanos = u32::from_be_bytes(b[4..].try_into().expect("4"));
            NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
                .ok_or_else(|| corrupt("a time out of range"))
        }),
        tag::DATE_TIME => fixed!(ChronoDateTime, 12, |b| instant(b).map(|t| t.naive_utc())),
        tag::DATE_TIME_UTC => fixed!(ChronoDateTimeUtc, 12, instant),
        tag::STRING if null => Value::String(None),
        tag::STRING => {
            let n = get_u32(b, at)? as usize;
            let s = std::str::from_utf8(take(b, at, n)?)
                .map_err(|_| corrupt("a string that is not UTF-8"))?;
            Value::String(Some(s.to_owned()))
        }
        tag::BYTES if null => Value::Bytes(None),
        tag::BYTES => {
            let n = get_u32(b, at)? as usize;
            Value::Bytes(Some(take(b, at, n)?.to_vec()))
        }
        tag::TYPED if !null => {
            let n = get_u32(b, at)? as usize;
            let text = std::str::from_utf8(take(b, at, n)?)
                .map_err(|_| corrupt("a typed value that is not UTF-8"))?;
            typed::from_text(text)?
        }
        other => return Err(corrupt(&format!("unknown value tag {other}"))),
    };
    Ok(v)
}

/// The date-time of 12 bytes of [`put_instant`].
fn instant(b: [u8; 12]) -> Result<DateTime<Utc>> {
    let secs = i64::from_be_bytes(b[..8].try_into().expect("8"));
    let nanos = u32::from_be_bytes(b[8..].try_into().expect("4"));
    Utc.timestamp_opt(secs, nanos)
        .single()
        .ok_or_else(|| corrupt("a date-time out of range"))
}

/// Read a whole value encoded alone (see [`put_value`]).
#[cfg(test)]
fn value_of(b: &[u8]) -> Result<Value> {
    let mut at = 0;
    let v = get_value(b, &mut at)?;
    if at != b.len() {
        return Err(corrupt("bytes after a value"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::same_value;

    /// A users' row's clocks and delete clock are the version row's, and
    /// read back as the state's.
    #[test]
    fn clocks_alone_are_the_version_rows_clocks() {
        use crate::model::clock::{Hlc, NodeId};
        let h = |physical: u64, node: u8| Hlc {
            physical,
            logical: 0,
            node: NodeId([node; 16]),
        };
        let ords = Ordinals::new([("a".to_owned(), 1), ("b".to_owned(), 2)]);
        let mut state = RowState::default();
        state.vals.insert("a".into(), Value::Int(Some(1)));
        state.vals.insert("b".into(), Value::Int(Some(2)));
        state.clocks.insert("a".into(), h(10, 1));
        state.clocks.insert("b".into(), h(20, 2));
        state.deleted_at = Some(h(15, 3));
        let whole = encode(&state, &ords).unwrap();
        let (clocks, del) = encode_clocks_of(&state, &ords).unwrap();
        assert_eq!(clocks, whole.clocks);
        assert_eq!(del, whole.del);
        let (back, deleted_at) = decode_row_clocks(&clocks, del.as_deref(), &ords)
            .unwrap()
            .unwrap();
        assert_eq!(
            back,
            vec![("a".to_owned(), h(10, 1)), ("b".to_owned(), h(20, 2))]
        );
        assert_eq!(deleted_at, Some(h(15, 3)));
        state.clocks.insert("c".into(), h(30, 1));
        assert!(encode_clocks_of(&state, &ords).is_err(), "no ordinal");
    }

    /// A register reads back its columns in ordinal order, and the spec it
    /// records for each where the text reads as a spec of that column: one
    /// that does not read, or names another column, is none.
    #[test]
    fn a_register_keeps_the_specs_that_read_as_its_columns() {
        use sea_orm::sea_query::ColumnType;
        let ords = Ordinals::new([
            ("b".to_owned(), 2),
            ("a".to_owned(), 1),
            ("c".to_owned(), 3),
        ]);
        assert_eq!(ords.names().collect::<Vec<_>>(), ["a", "b", "c"]);
        let text = |name: &str| {
            let spec = crate::model::testing::column(name, ColumnType::Integer, false);
            serde_json::to_string(&spec).unwrap()
        };
        let ords = ords.with_specs(
            "t",
            vec![
                ("a".to_owned(), text("a")),
                ("b".to_owned(), text("c")),
                ("c".to_owned(), "{".to_owned()),
            ],
        );
        assert_eq!(ords.spec("a").map(|s| s.name.as_str()), Some("a"));
        assert!(ords.spec("b").is_none(), "a spec of another column");
        assert!(ords.spec("c").is_none(), "a spec that does not read");
        assert_eq!(ords.of("b"), Some(2), "the ordinals are kept");
        assert_eq!(ords.names().count(), 3);
    }

    fn roundtrip(v: Value) {
        let mut b = Vec::new();
        put_value(&v, &mut b).unwrap();
        let back = value_of(&b).unwrap();
        assert!(same_value(&back, &v), "{v:?} came back as {back:?}");
        // The variant of a NULL is kept.
        assert_eq!(
            std::mem::discriminant(&back),
            std::mem::discriminant(&v),
            "{v:?}"
        );
    }

    #[test]
    fn every_value_comes_back_as_it_was() {
        let t = Utc
            .with_ymd_and_hms(2026, 12, 5, 1, 2, 3)
            .unwrap()
            .checked_add_signed(chrono::Duration::nanoseconds(123_456_789))
            .unwrap();
        let mut values = crate::model::testing::values();
        values.extend([
            Value::Double(Some(f64::INFINITY)),
            Value::ChronoTime(Some(NaiveTime::from_hms_nano_opt(23, 59, 59, 1).unwrap())),
            Value::ChronoDateTime(Some(t.naive_utc())),
            Value::ChronoDateTimeUtc(Some(t)),
        ]);
        for v in values {
            roundtrip(v);
        }
    }

    /// A decimal keeps its scale (`1.50` is not `1.5` for a diff).
    #[test]
    fn decimals_keep_their_scale() {
        let mut b = Vec::new();
        put_value(&Value::Decimal(Some("1.50".parse().unwrap())), &mut b).unwrap();
        match value_of(&b).unwrap() {
            Value::Decimal(Some(d)) => assert_eq!(d.to_string(), "1.50"),
            other => panic!("{other:?}"),
        }
    }

    /// The stored bytes, pinned: a release that reads them differently
    /// would read every replica's states wrong.
    #[test]
    fn the_encoding_is_pinned() {
        let mut b = Vec::new();
        put_value(&Value::String(Some("hé".into())), &mut b).unwrap();
        put_value(&Value::Int(None), &mut b).unwrap();
        put_value(&Value::BigInt(Some(-2)), &mut b).unwrap();
        assert_eq!(
            b,
            [
                12,
                0,
                0,
                0,
                3,
                b'h',
                0xc3,
                0xa9,    // string, 3 bytes
                4 | 128, // NULL int
                5,
                255,
                255,
                255,
                255,
                255,
                255,
                255,
                254, // big int -2
            ]
        );
        // rust_decimal's layout (flags with the scale and sign, then the
        // 96-bit mantissa, little-endian): a release of it that changed
        // the layout would read every stored decimal wrong.
        let mut d = Vec::new();
        put_value(&Value::Decimal(Some("-1.50".parse().unwrap())), &mut d).unwrap();
        assert_eq!(d, [20, 0, 0, 2, 128, 150, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let h = Hlc {
            physical: 0x0102_0304_0506_0708,
            logical: 9,
            node: NodeId([7; 16]),
        };
        let mut c = Vec::new();
        put_clock(&h, &mut c);
        assert_eq!(&c[..12], &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 9]);
        assert_eq!(&c[12..], &[7; 16]);
        assert_eq!(get_clock(&c).unwrap(), h);
    }

    /// Cut or garbled bytes are an error naming the version row, never a
    /// panic or a wrong value.
    #[test]
    fn bad_bytes_are_refused() {
        let mut b = Vec::new();
        put_value(&Value::String(Some("hello".into())), &mut b).unwrap();
        for n in 0..b.len() {
            assert!(value_of(&b[..n]).is_err(), "cut at {n}");
        }
        assert!(value_of(&[99]).is_err());
        assert!(value_of(&[tag::BOOL, 2]).is_err());
        assert!(value_of(&[tag::STRING, 0, 0, 0, 1, 0xff]).is_err());
        assert!(value_of(&[tag::CHAR, 0, 0x11, 0, 0]).is_err());
        // A typed value's tag with NULL set is no value, even with a
        // well-formed one after it.
        let mut typed_null = vec![tag::TYPED | tag::NULL, 0, 0, 0, 9];
        typed_null.extend_from_slice(br#"{"Int":1}"#);
        assert!(value_of(&typed_null).is_err());
        assert!(get_clock(&[0; 27]).is_err());
        let ords = Ordinals::new([("a".to_owned(), 1)]);
        // An ordinal nobody registered.
        let mut c = vec![0, 0, 0, 2];
        put_clock(&Hlc::default(), &mut c);
        assert!(decode(&c, None, &[], &ords).is_err());
        // Clocks cut short (but after the count: no clocks at all).
        for n in (1..c.len()).filter(|n| *n != 2) {
            assert!(decode_clocks(&c[..n]).is_err(), "cut at {n}");
        }
    }

    fn clock(physical: u64, node: u8) -> Hlc {
        Hlc {
            physical,
            logical: 0,
            node: NodeId([node; 16]),
        }
    }

    /// Columns written together store their clock once.
    #[test]
    fn a_shared_clock_is_stored_once() {
        let (a, b) = (clock(10, 1), clock(12, 2));
        let clocks = [(1, &a), (2, &a), (3, &b), (5, &a)];
        let e = encode_clocks(&clocks);
        assert_eq!(e.len(), 2 + 3 * 2 + CLOCK_BYTES + 2 + CLOCK_BYTES);
        assert_eq!(&e[..8], &[0, 3, 0, 1, 0, 2, 0, 5]);
        let mut back = decode_clocks(&e).unwrap();
        back.sort_unstable_by_key(|(n, _)| *n);
        assert_eq!(back, [(1, a), (2, a), (3, b), (5, a)]);
        assert_eq!(decode_clocks(&encode_clocks(&[])).unwrap(), []);
        // The most common clock, wherever it sorts; of two as common, the
        // earlier.
        let e = encode_clocks(&[(1, &a), (2, &b), (3, &b), (4, &b)]);
        assert_eq!(&e[..8], &[0, 3, 0, 2, 0, 3, 0, 4]);
        let e = encode_clocks(&[(1, &b), (2, &b), (3, &a), (4, &a)]);
        assert_eq!(&e[..6], &[0, 2, 0, 3, 0, 4]);
        assert_eq!(decode_clocks(&encode_clocks(&[(4, &b)])).unwrap(), [(4, b)]);
    }

    /// Any set of column clocks comes back as it was, however many
    /// columns share which clock (a small generator, fixed seed).
    #[test]
    fn clocks_come_back_whatever_they_share() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            seed >> 33
        };
        for _ in 0..5000 {
            let pool: Vec<Hlc> = (0..3)
                .map(|_| Hlc {
                    physical: next() % 4,
                    logical: (next() % 2) as u32,
                    node: NodeId([(next() % 2) as u8; 16]),
                })
                .collect();
            let columns = next() % 7;
            let owned: Vec<(u16, Hlc)> = (0..columns)
                .map(|i| (i as u16 * 2 + 1, pool[(next() % 3) as usize]))
                .collect();
            let refs: Vec<(u16, &Hlc)> = owned.iter().map(|(o, h)| (*o, h)).collect();
            let mut back = decode_clocks(&encode_clocks(&refs)).unwrap();
            back.sort_unstable_by_key(|(o, _)| *o);
            assert_eq!(back, owned);
        }
    }

    #[test]
    fn states_come_back_whole() {
        let ords = Ordinals::new([
            ("name".to_owned(), 1),
            ("email".to_owned(), 2),
            ("gone_col".to_owned(), 3),
            ("f_kept".to_owned(), 4),
        ]);
        let mut s = RowState::default();
        s.set("name", &Value::String(Some("Ada".into())), clock(10, 1));
        s.set("email", &Value::String(None), clock(12, 2));
        // A clock without a value and a value without a clock survive.
        s.clocks.insert("gone_col".into(), clock(5, 3));
        s.vals.insert("f_kept".into(), Value::Int(Some(4)));
        s.deleted_at = Some(clock(11, 9));
        let e = encode(&s, &ords).unwrap();
        assert!(e.live);
        let back = decode(&e.clocks, e.del.as_deref(), &e.vals, &ords).unwrap();
        assert!(back.same(&s), "{back:?}");
        // Three distinct clocks: none shared, then the pairs in ordinal
        // order, whatever the map order.
        assert_eq!(&e.clocks[..4], &[0, 0, 0, 1]);
        s.deleted_at = Some(clock(13, 0));
        assert!(!encode(&s, &ords).unwrap().live);
        // A column without an ordinal is refused, not dropped.
        s.vals.insert("new".into(), Value::Int(Some(1)));
        assert!(encode(&s, &ords).is_err());
        assert_eq!(ords.missing([&s].into_iter()), ["new"]);
        assert_eq!(ords.next().unwrap(), 5);
    }

    /// A users' table gives a decimal back at its column's scale and a
    /// date-time in UTC (PostgreSQL) or without its offset (MySQL): the
    /// forms the metadata keeps give each value back as it was pushed, and
    /// a form that would lose a digit, or names a column the row lacks, is
    /// left alone.
    #[test]
    fn forms_give_values_read_back_their_pushed_form() {
        use chrono::{DateTime, FixedOffset};
        let ords = Ordinals::new([
            ("amount".to_owned(), 1),
            ("at".to_owned(), 2),
            ("name".to_owned(), 3),
        ]);
        let dec = |s: &str| Value::Decimal(Some(s.parse().unwrap()));
        let at = |s: &str| {
            Value::ChronoDateTimeWithTimeZone(Some(
                DateTime::<FixedOffset>::parse_from_rfc3339(s).unwrap(),
            ))
        };
        let mut pushed = RowState::default();
        pushed.vals.insert("amount".into(), dec("1.5"));
        pushed
            .vals
            .insert("at".into(), at("2026-01-01T10:00:00+02:00"));
        pushed.vals.insert("name".into(), Value::from("x"));
        let forms = encode_forms(&pushed, &ords).unwrap().unwrap();
        let mut read: BTreeMap<String, Value> = BTreeMap::new();
        read.insert("amount".into(), dec("1.500"));
        read.insert("at".into(), at("2026-01-01T08:00:00+00:00"));
        read.insert("name".into(), Value::from("x"));
        apply_forms(&forms, &ords, &mut read).unwrap();
        for (c, v) in &pushed.vals {
            // The same text, not only the same value.
            assert_eq!(format!("{:?}", read[c]), format!("{v:?}"), "{c}");
        }
        // A scale that would round is not taken.
        let mut fine = BTreeMap::from([("amount".to_owned(), dec("1.25"))]);
        apply_forms(&forms, &ords, &mut fine).unwrap();
        assert_eq!(
            format!("{:?}", fine["amount"]),
            format!("{:?}", dec("1.25"))
        );
        // No value of those kinds: no forms.
        let mut plain = RowState::default();
        plain.vals.insert("name".into(), Value::from("x"));
        assert_eq!(encode_forms(&plain, &ords).unwrap(), None);
        // Bytes that are no forms are an error, not a panic.
        for bad in [
            &[0u8][..],
            &[0, 1][..],
            &[0, 1, 9][..],
            &[0, 1, 2, 0][..],
            &[0, 9, 1, 2][..],
        ] {
            assert!(apply_forms(bad, &ords, &mut read).is_err(), "{bad:?}");
        }
    }
}
