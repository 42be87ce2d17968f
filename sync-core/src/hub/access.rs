//! Accounts: one hub serving many users, each reading and writing only
//! their own rows and the shared tables'.
//!
//! A table's [`Ownership`] is recorded by the hub at its first install
//! (`tables::ownership`); a device cannot change it. Each log entry of a
//! table with owners carries the owner of its row after the change (the
//! text of the owner column), so a user's pull is one filtered range read
//! of the log; entries logged before the table had owners carry none, and
//! a pull finds their owner from the row's state. A snapshot reads the
//! owner from each row's state.
//!
//! A push under an account is checked change by change against the row
//! states, inside the push transaction and under the sequence lock (so
//! no other push moves a row between the check and the write): a change
//! of another user's row, one that gives a row to another user, and one of
//! a row the hub does not hold (other than an insert) is refused, and so
//! is every later change of a refused row in the batch; refused changes
//! are parked or halt the stream by the hub's policy, like any change the
//! hub cannot apply, except a change of a row another user holds, one of
//! a row the hub never had, and (in the database) one whose key or unique
//! value another row holds: those are parked whatever the policy. Keys
//! are one space for all users, and an honest device meets such a row
//! only when another user took the key first (and then edits the row the
//! hub refused); a halt there would let that user stop this one's stream
//! for good.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, Value};

use super::SqlHub;
use super::owner::{owner_of_row, owner_text};
use super::tables::{HUB_ACCESS, HUB_KEYS, HUB_ORIGINS};
use super::visible::Visible;
use crate::model::change::{Change, Op, TableSpec};
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::protocol::{
    Cursor, Hub, HubInfo, PullBatch, PushAck, SnapshotPage, Standing, StatePage,
};
use crate::model::syncable::Ownership;

/// An authorization rule beyond ownership: given the user and a change
/// the user pushes (of a row the user may write), `Err(reason)` refuses
/// the change.
pub type Authorize = dyn Fn(&str, &Change) -> std::result::Result<(), String> + Send + Sync;

/// The user a device syncs as, through a hub that serves accounts (see
/// [`SqlHub::for_account`]).
///
/// ```
/// use std::sync::Arc;
/// use sync_core::hub::Account;
///
/// let account = Account::new("alice")
///     .unwrap()
///     .with_authorization(Arc::new(|user: &str, change: &sync_core::Change| {
///         if change.table == "audit_log" && change.op != sync_core::Op::Insert {
///             return Err(format!("{user} may only add to the audit log"));
///         }
///         Ok(())
///     }));
/// assert_eq!(account.user(), "alice");
/// ```
#[derive(Clone)]
pub struct Account {
    user: String,
    share_undeclared: bool,
    new_tables: bool,
    adopt: bool,
    authorize: Option<Arc<Authorize>>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("user", &self.user)
            .field("share_undeclared", &self.share_undeclared)
            .field("new_tables", &self.new_tables)
            .field("adopt", &self.adopt)
            .field("authorize", &self.authorize.is_some())
            .finish()
    }
}

impl Account {
    /// The account of `user` (the text its rows' owner column holds).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty name (an empty owner column would
    /// make every row without an owner this user's).
    pub fn new(user: impl Into<String>) -> Result<Self> {
        let user = user.into();
        if user.is_empty() {
            return Err(Error::Config("an account needs a non-empty user".into()));
        }
        Ok(Account {
            user,
            share_undeclared: false,
            new_tables: true,
            adopt: false,
            authorize: None,
        })
    }

    /// The user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Treat tables that declare no ownership as shared (every user reads
    /// and writes them). Off by default: such a table is refused at
    /// install, naming what to declare.
    pub fn sharing_undeclared(mut self, share: bool) -> Self {
        self.share_undeclared = share;
        self
    }

    /// Whether this user's install may add tables the hub does not have
    /// yet (default yes). With `false`, only tables some earlier install
    /// recorded are taken, with the columns the hub's table has (an
    /// operator installs new ones directly, or through an account that
    /// may): a device cannot create tables or columns, nor be the first
    /// to declare who owns a table's rows.
    pub fn adding_tables(mut self, may: bool) -> Self {
        self.new_tables = may;
        self
    }

    /// Whether this user's install may take a table the hub database
    /// already holds without having it recorded as a synced table (default
    /// no: it may be the application's own table, which a device must not
    /// reach). An operator who made the hub's tables by hand, with their
    /// constraints, lets the first install adopt them.
    pub fn adopting_tables(mut self, adopt: bool) -> Self {
        self.adopt = adopt;
        self
    }

    /// A rule the hub checks for each change this user pushes, after
    /// ownership.
    pub fn with_authorization(mut self, rule: Arc<Authorize>) -> Self {
        self.authorize = Some(rule);
        self
    }

    /// Why `change` of `spec`'s table is refused to this user, if it is.
    /// `state` is the hub's state of its row (`None`: never seen);
    /// `batch` what the earlier changes of the same push did.
    pub(super) fn refusal(
        &self,
        spec: &TableSpec,
        change: &Change,
        key: &str,
        state: Option<&RowState>,
        batch: &mut BatchOwners,
    ) -> Option<Refused> {
        let verdict = key_types(spec, change)
            .map_err(|r| (r, false))
            .and_then(|()| self.check(spec, change, key, state, batch))
            .and_then(|()| match &self.authorize {
                Some(rule) => rule(&self.user, change).map_err(|r| (r, false)),
                None => Ok(()),
            });
        let id = (change.table.clone(), key.to_owned());
        match verdict {
            Ok(()) => {
                if spec.ownership.column().is_some() {
                    batch.owners.insert(id, self.user.clone());
                }
                None
            }
            Err((reason, parked_always)) => {
                let parked_always = parked_always || batch.refused.get(&id) == Some(&true);
                batch.refused.insert(id, parked_always);
                Some(Refused {
                    reason: format!(
                        "{} {key}: refused to user `{}`: {reason}",
                        change.table, self.user
                    ),
                    parked_always,
                })
            }
        }
    }

    fn check(
        &self,
        spec: &TableSpec,
        change: &Change,
        key: &str,
        state: Option<&RowState>,
        batch: &BatchOwners,
    ) -> std::result::Result<(), (String, bool)> {
        let column = match &spec.ownership {
            Ownership::Shared => return Ok(()),
            Ownership::Undeclared if self.share_undeclared => return Ok(()),
            Ownership::Undeclared => return Err((undeclared(&spec.name), false)),
            Ownership::Owner(column) => column,
        };
        let id = (change.table.clone(), key.to_owned());
        if let Some(&parked_always) = batch.refused.get(&id) {
            return Err((
                "an earlier change of this row in the same push was refused".into(),
                parked_always,
            ));
        }
        let current = match batch.owners.get(&id) {
            Some(o) => Some(o.clone()),
            None => state
                .filter(|s| s.max_clock().is_some())
                .map(|s| owner_of_row(column, &change.pk, s)),
        };
        match (&current, change.op) {
            (Some(o), _) if *o != self.user => {
                return Err(("the row belongs to another user".into(), true));
            }
            // Parked whatever the policy too: an honest device meets it
            // only for a row whose insert the hub refused and parked (a
            // key another user took), which the device then edits.
            (None, Op::Update | Op::Delete) => {
                return Err(("the hub holds no row of this key to change".into(), true));
            }
            _ => {}
        }
        if change.op == Op::Delete {
            return Ok(());
        }
        let named = change
            .columns
            .iter()
            .chain(&change.pk)
            .find(|(n, _)| n == column)
            .map(|(_, v)| owner_text(v).unwrap_or_default());
        let reason = match named {
            Some(o) if o != self.user => {
                if current.is_some() {
                    format!("it would give the row to another user (`{column}`)")
                } else {
                    format!("it would create a row of another user (`{column}`)")
                }
            }
            None if change.op == Op::Insert => {
                format!("an insert without its owner column `{column}`")
            }
            _ => return Ok(()),
        };
        Err((reason, false))
    }
}

/// Refuse a key value of another variant than the one its column's type
/// takes: the hub knows a row by its key's typed values, its database by
/// the column's value, so a key `Int(5)` for a `BIGINT` column (where the
/// hub holds `BigInt(5)`), or `Char('k')` for a text column (where it holds
/// `String("k")`), would reach another user's row past its state. `spec`'s
/// key is the one the hub records (an install with another is refused).
pub(super) fn key_types(spec: &TableSpec, change: &Change) -> std::result::Result<(), String> {
    for (name, v) in &change.pk {
        let Some(col) = spec.column(name) else {
            return Err(format!("`{name}` is not a key column of the table"));
        };
        if !key_variant(&col.ty, v) {
            return Err(format!("key column `{name}` holds a value of another type"));
        }
    }
    Ok(())
}

/// Whether `v` is of the one variant a key of type `ty` takes (the one
/// SeaORM gives the entity field of that type; for a date-time with a
/// zone, `DateTimeUtc`'s).
fn key_variant(ty: &sea_orm::sea_query::ColumnType, v: &Value) -> bool {
    use sea_orm::sea_query::ColumnType as T;
    match ty {
        T::TinyInteger => matches!(v, Value::TinyInt(_)),
        T::SmallInteger => matches!(v, Value::SmallInt(_)),
        T::Integer => matches!(v, Value::Int(_)),
        T::BigInteger => matches!(v, Value::BigInt(_)),
        T::TinyUnsigned => matches!(v, Value::TinyUnsigned(_)),
        T::SmallUnsigned => matches!(v, Value::SmallUnsigned(_)),
        T::Unsigned => matches!(v, Value::Unsigned(_)),
        T::BigUnsigned => matches!(v, Value::BigUnsigned(_)),
        T::Uuid => matches!(v, Value::Uuid(_)),
        T::Char(_) | T::String(_) | T::Text | T::Enum { .. } => matches!(v, Value::String(_)),
        T::Float => matches!(v, Value::Float(_)),
        T::Double => matches!(v, Value::Double(_)),
        T::Decimal(_) => matches!(v, Value::Decimal(_)),
        T::DateTime | T::Timestamp => matches!(v, Value::ChronoDateTime(_)),
        T::TimestampWithTimeZone => matches!(v, Value::ChronoDateTimeUtc(_)),
        T::Time => matches!(v, Value::ChronoTime(_)),
        T::Date => matches!(v, Value::ChronoDate(_)),
        T::Binary(_) | T::VarBinary(_) | T::Blob => matches!(v, Value::Bytes(_)),
        T::Boolean => matches!(v, Value::Bool(_)),
        T::Json | T::JsonBinary => matches!(v, Value::Json(_)),
        _ => false,
    }
}

/// A plain SQL name: letters, digits and `_`, not starting with a digit,
/// at most 63 bytes (PostgreSQL's limit).
fn identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A column type the hub creates alike on every dialect (see the README's
/// types table), with plain names where it names a type.
fn portable_type(ty: &sea_orm::sea_query::ColumnType) -> bool {
    use sea_orm::sea_query::ColumnType as T;
    match ty {
        T::Char(_)
        | T::String(_)
        | T::Text
        | T::TinyInteger
        | T::SmallInteger
        | T::Integer
        | T::BigInteger
        | T::TinyUnsigned
        | T::SmallUnsigned
        | T::Unsigned
        | T::BigUnsigned
        | T::Float
        | T::Double
        | T::Decimal(_)
        | T::DateTime
        | T::Timestamp
        | T::TimestampWithTimeZone
        | T::Time
        | T::Date
        | T::Binary(_)
        | T::VarBinary(_)
        | T::Blob
        | T::Boolean
        | T::Json
        | T::JsonBinary
        | T::Uuid => true,
        T::Enum { name, variants } => {
            identifier(&name.to_string()) && variants.iter().all(|v| identifier(&v.to_string()))
        }
        _ => false,
    }
}

/// The ownership recorded for `table` once its install has recorded it
/// (its key too), waiting up to about a second for an install that made
/// the table to record it; `None` if none does.
async fn records_of<C: ConnectionTrait>(db: &C, table: &str) -> Result<Option<Ownership>> {
    for attempt in 0..20u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let owned = HUB_ACCESS
            .read(db, table)
            .await
            .map_err(Error::or_offline)?;
        let keyed = HUB_KEYS.read(db, table).await.map_err(Error::or_offline)?;
        if let (Some(record), Some(_)) = (owned, keyed) {
            return Ok(Ownership::from_record(&record));
        }
    }
    Ok(None)
}

/// The refusal of a table that declares no ownership.
fn undeclared(table: &str) -> String {
    format!(
        "table `{table}` declares no ownership: declare #[syncable(owner = \"<column>\")] \
         or #[syncable(shared)] on its entity (or serve undeclared tables as shared)"
    )
}

/// The most tables one device's install names (each is checked against
/// the hub database's catalog).
pub(crate) const MAX_TABLES: usize = 256;

/// What the earlier changes of one push did to rows with owners.
#[derive(Debug, Default)]
pub(super) struct BatchOwners {
    owners: HashMap<(String, String), String>,
    /// Refused rows, and whether their refusal is parked whatever the
    /// policy ([`Refused::parked_always`]).
    refused: HashMap<(String, String), bool>,
}

/// Why the hub refuses a change to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refused {
    /// The reason, naming the table, the key and the user (never the
    /// row's owner).
    pub(super) reason: String,
    /// The row belongs to another user, or the hub never had it (an edit
    /// of a row whose insert was refused): parked whatever the hub's
    /// reject policy. An honest device meets this only when another user
    /// took the key first (a natural key, a guessed one); halting would
    /// let that other user stop this user's stream for good, and nobody at
    /// the hub can lift it. The device is told, as of any parked change.
    pub(super) parked_always: bool,
}

/// A [`SqlHub`] as one user sees it: the [`Hub`] a server runs for each
/// request of an account (see [`SqlHub::for_account`]).
#[derive(Debug)]
pub struct UserHub<'h> {
    hub: &'h SqlHub,
    account: Account,
    /// The device's tables, as the hub placed them at its install: its
    /// pushes are merged with these, not with another device's (an
    /// earlier version of the application, another user).
    tables: std::sync::Mutex<Option<Arc<Vec<TableSpec>>>>,
}

impl SqlHub {
    /// This hub as `account` sees it: pulls and snapshots hold only the
    /// user's rows and the shared tables'; a push that creates, changes,
    /// deletes or gives away another user's row is refused (parked or
    /// halted by the hub's policy, with the reason), as is a change the
    /// account's authorization rule refuses. Installing a table that
    /// declares no ownership is refused unless the account shares
    /// undeclared tables.
    ///
    /// A push is merged with the tables the device installed through this
    /// `UserHub` (or gave with [`UserHub::with_tables`]); a push before
    /// either fails with [`Error::UnknownTable`], and the caller installs
    /// and pushes again (the HTTP hub answers `409 install-required`).
    pub fn for_account(&self, account: Account) -> UserHub<'_> {
        UserHub {
            hub: self,
            account,
            tables: std::sync::Mutex::new(None),
        }
    }
}

impl UserHub<'_> {
    /// The account.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The device's tables as an earlier install placed them (see
    /// [`UserHub::tables`]): a server keeps them between requests.
    pub fn with_tables(self, tables: Arc<Vec<TableSpec>>) -> Self {
        if let Ok(mut mine) = self.tables.lock() {
            *mine = Some(tables);
        }
        self
    }

    /// What this account's user may see of the hub, as it stands now.
    async fn visible(&self) -> Result<Visible> {
        Visible::load(
            self.hub.connection(),
            &self.account.user,
            self.account.share_undeclared,
        )
        .await
    }

    /// The user's rows changed after `cursor`, leaving out those whose
    /// every column `skip`'s pushes set.
    async fn states(&self, cursor: Cursor, limit: u64, skip: Option<NodeId>) -> Result<StatePage> {
        let visible = self.visible().await?;
        let tables = self.tables();
        super::since::read(
            self.hub.connection(),
            &self.hub.positioned,
            tables.as_deref().map_or(&[], Vec::as_slice),
            cursor,
            limit,
            skip,
            Some(&visible),
        )
        .await
    }

    /// The tables of this device's install, as the hub placed them (its
    /// schema, the ownership the hub records).
    pub fn tables(&self) -> Option<Arc<Vec<TableSpec>>> {
        self.tables.lock().ok().and_then(|t| t.clone())
    }

    /// Refuse, before anything is created, an install a device may not
    /// make: a name of the hub's own tables or one that is not a plain
    /// identifier, a column type the hub would not create the same on
    /// every dialect, a new table when the account may add none (or one
    /// in a schema of its own, or one that exists in the hub database
    /// without being a synced table: an application's own table), and a
    /// table nobody declared the ownership of.
    async fn admissible(&self, tables: &[TableSpec]) -> Result<()> {
        let refuse = |t: &str, why: String| Err(Error::Config(format!("table `{t}`: {why}")));
        if tables.len() > MAX_TABLES {
            return Err(Error::Config(format!(
                "an install of {} tables; a device installs at most {MAX_TABLES}",
                tables.len()
            )));
        }
        let mut names = std::collections::HashSet::new();
        for t in tables {
            if !names.insert(t.name.to_ascii_lowercase()) {
                return refuse(&t.name, "named twice in one install".into());
            }
            super::tables::check_spec(t, crate::dialect::of_db(self.hub.connection())?)?;
            if t.name.to_ascii_lowercase().starts_with("_tidesync") {
                return refuse(
                    &t.name,
                    "names starting with `_tidesync` are the hub's own".into(),
                );
            }
            let columns = t.columns.iter().chain(&t.local_only);
            for name in std::iter::once(&t.name).chain(columns.clone().map(|c| &c.name)) {
                if !identifier(name) {
                    return refuse(
                        &t.name,
                        format!(
                            "`{name}` is not a plain name (letters, digits and `_`, \
                             at most 63, not starting with a digit)"
                        ),
                    );
                }
            }
            if let Some(c) = columns.clone().find(|c| !portable_type(&c.ty)) {
                return refuse(
                    &t.name,
                    format!(
                        "column `{}` is of a type this hub does not take from devices ({:?})",
                        c.name, c.ty
                    ),
                );
            }
        }
        let db = self.hub.connection();
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        let recorded = HUB_ACCESS
            .read_many(db, &names)
            .await
            .map_err(Error::or_offline)?;
        let keyed = HUB_KEYS
            .read_many(db, &names)
            .await
            .map_err(Error::or_offline)?;
        let d = crate::dialect::of_db(db)?;
        for t in tables {
            // A name counts as a synced table's when its key is recorded
            // too (recorded once the table is made) or the hub holds row
            // states of it (a table of an earlier release): a record alone
            // may be left by a failed install of an earlier release, and
            // the application's table of that name is not a synced one.
            let synced = recorded.contains_key(&t.name)
                && (keyed.contains_key(&t.name)
                    || super::tables::has_states(db, &t.name)
                        .await
                        .map_err(Error::or_offline)?);
            let ownership = match recorded
                .get(&t.name)
                .and_then(|r| Ownership::from_record(r))
            {
                Some(r) if synced && t.ownership == Ownership::Undeclared => r,
                // Who owns the rows of a table recorded without owners is
                // set by an operator (a direct install), never by a device:
                // a device declaring it shared would read every user's
                // rows, and one naming an owner column would split them as
                // it likes.
                Some(Ownership::Undeclared) if synced => {
                    return refuse(
                        &t.name,
                        format!(
                            "the hub records no owners for it, and this device's entity \
                             declares it {}; over HTTP a device cannot set who owns a table's \
                             rows (an operator records it with a direct install)",
                            t.ownership
                        ),
                    );
                }
                Some(_) if synced => t.ownership.clone(),
                _ => {
                    if !self.account.new_tables {
                        return refuse(
                            &t.name,
                            "this hub takes no new tables from devices; an operator installs it first"
                                .into(),
                        );
                    }
                    if t.schema.is_some() {
                        return refuse(
                            &t.name,
                            "a device creates tables in the hub's search path: name no schema"
                                .into(),
                        );
                    }
                    let there = crate::store::ddl::existing_columns(
                        db,
                        d,
                        crate::dialect::Place::own(&t.name),
                    )
                    .await
                    .map_err(Error::or_offline)?;
                    if !there.is_empty() && !self.account.adopt {
                        // Another device's first install may have made it
                        // a moment ago and be recording it now (first
                        // syncs at once): wait for its records before
                        // taking it for the application's own table.
                        match records_of(db, &t.name).await? {
                            Some(r) if t.ownership == Ownership::Undeclared => r,
                            Some(_) => t.ownership.clone(),
                            None => {
                                return refuse(
                                    &t.name,
                                    "the hub database has a table of this name that is not one \
                                     of its synced tables; an operator installs it directly (or \
                                     renames it)"
                                        .into(),
                                );
                            }
                        }
                    } else {
                        t.ownership.clone()
                    }
                }
            };
            if ownership == Ownership::Undeclared && !self.account.share_undeclared {
                return Err(Error::Config(undeclared(&t.name)));
            }
            if !self.account.new_tables {
                self.unchanged(d, t).await?;
            }
        }
        Ok(())
    }

    /// Refuse an install that would change the hub's table of `t` (add a
    /// column, make the table again): a hub that takes no new tables from
    /// devices takes no schema changes either. Its tables are the
    /// operator's, and a device adding columns could fill a table up to
    /// its database's limit or take column names the next release of the
    /// application means otherwise.
    async fn unchanged(&self, d: &dyn crate::dialect::Dialect, t: &TableSpec) -> Result<()> {
        let db = self.hub.connection();
        let schema = match d.has_schemas() {
            true => super::tables::HUB_PLACES
                .read(db, &t.name)
                .await
                .map_err(Error::or_offline)?
                .filter(|s| !s.is_empty()),
            false => None,
        };
        let place = crate::dialect::Place {
            schema: schema.as_deref(),
            name: &t.name,
        };
        let there = crate::store::ddl::existing_columns(db, d, place)
            .await
            .map_err(Error::or_offline)?;
        let mut missing: Vec<String> = t
            .columns
            .iter()
            .chain(&t.local_only)
            .filter(|c| !there.contains(&c.name))
            .map(|c| format!("`{}`", c.name))
            .collect();
        // Nor types: an enum the entity names that the database lacks.
        let types = crate::store::user_tables::missing_types(db, d, t)
            .await
            .map_err(Error::or_offline)?;
        missing.extend(types.into_iter().map(|(name, _)| format!("type `{name}`")));
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "table `{}`: this hub takes no new tables nor columns from devices, and it \
             lacks {}; an operator adds them first (a direct install)",
            t.name,
            missing.join(", ")
        )))
    }

    /// `tables` with the ownership the hub records now for the tables of
    /// `batch`: another device may have declared owners since the install
    /// was cached, or an operator changed the record.
    async fn current(&self, batch: &[Change], tables: &[TableSpec]) -> Result<Vec<TableSpec>> {
        let named: Vec<&str> = tables
            .iter()
            .filter(|t| batch.iter().any(|c| c.table == t.name))
            .map(|t| t.name.as_str())
            .collect();
        let mut out = tables.to_vec();
        if named.is_empty() {
            return Ok(out);
        }
        let recorded = HUB_ACCESS
            .read_many(self.hub.connection(), &named)
            .await
            .map_err(Error::or_offline)?;
        for t in &mut out {
            if let Some(o) = recorded
                .get(&t.name)
                .and_then(|r| Ownership::from_record(r))
            {
                t.ownership = o;
            }
        }
        Ok(out)
    }

    /// Take `origin` for this user, or refuse it if another user pushed
    /// under it first. Origins are not secret (a shared table's changes
    /// carry their author's): without this, a user could push under
    /// another user's device identity, and the hub would take that
    /// device's own changes later as already delivered.
    async fn claim(&self, origin: NodeId) -> Result<()> {
        let db = self.hub.connection();
        let key = origin.to_string();
        let claimed = HUB_ORIGINS
            .read(db, &key)
            .await
            .map_err(Error::or_offline)?;
        // Claimed already (every push but a device's first): one read, no
        // write.
        let owner = match claimed {
            Some(owner) => owner,
            None => {
                if self.hub.applied(origin).await.map_err(Error::or_offline)? > 0 {
                    // Pushed directly before the hub served accounts:
                    // nobody's to take over the wire.
                    return Err(Error::Unauthorized(format!(
                        "device identity {key} pushed to this hub directly; over HTTP a \
                         device takes a new identity (a new replica database)"
                    )));
                }
                HUB_ORIGINS
                    .insert_if_missing(db, &key, &self.account.user)
                    .await
                    .map_err(Error::or_offline)?;
                // Whoever inserted first (another server may have raced).
                HUB_ORIGINS
                    .require(db, &key)
                    .await
                    .map_err(Error::or_offline)?
            }
        };
        if owner != self.account.user {
            return Err(Error::Unauthorized(format!(
                "device identity {key} pushes for another user; a device signing in as \
                 another user takes a new identity (a new replica database)"
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Hub for UserHub<'_> {
    async fn install(&self, tables: &[TableSpec]) -> Result<HubInfo> {
        self.admissible(tables).await?;
        let (info, placed) = self.hub.install_tables(tables).await?;
        if !self.account.share_undeclared
            && let Some(t) = placed.iter().find(|t| t.ownership == Ownership::Undeclared)
        {
            return Err(Error::Config(undeclared(&t.name)));
        }
        if let Ok(mut mine) = self.tables.lock() {
            *mine = Some(Arc::new(placed));
        }
        Ok(info)
    }

    async fn push(&self, batch: &[Change]) -> Result<PushAck> {
        let Some(tables) = self.tables() else {
            return Err(Error::UnknownTable(
                "this device's tables (install before pushing)".into(),
            ));
        };
        // Two reads of the hub, at once (the claim of a device's first
        // push also writes it, which a failure of the other leaves as
        // harmless as a push that failed later: the same user's claim).
        let claimed = async {
            match batch.first() {
                Some(first) => self.claim(first.id.origin).await,
                None => Ok(()),
            }
        };
        let ((), tables) = tokio::try_join!(claimed, self.current(batch, &tables))?;
        self.hub.push_as(batch, Some(&self.account), &tables).await
    }

    async fn standing(&self, origin: NodeId, at: Option<Cursor>) -> Result<Standing> {
        let claimed = HUB_ORIGINS
            .read(self.hub.connection(), &origin.to_string())
            .await
            .map_err(Error::or_offline)?;
        if claimed.is_some_and(|u| u != self.account.user) {
            return Err(Error::Unauthorized(format!(
                "device identity {origin} belongs to another user"
            )));
        }
        let mut standing = self.hub.standing(origin, None).await?;
        if let Some(c) = at {
            let visible = self.visible().await?;
            standing.at = super::log::id_at(self.hub.connection(), c, Some(&visible))
                .await
                .map_err(Error::or_offline)?;
        }
        Ok(standing)
    }

    /// The user's rows changed after `cursor`, as changes (see
    /// [`StatePage`]'s conversion).
    async fn pull(&self, cursor: Cursor, limit: u64) -> Result<PullBatch> {
        Ok(self.states(cursor, limit, None).await?.into())
    }

    async fn pull_excluding(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: NodeId,
    ) -> Result<PullBatch> {
        Ok(self.states(cursor, limit, Some(origin)).await?.into())
    }

    async fn pull_states(&self, cursor: Cursor, limit: u64, origin: NodeId) -> Result<StatePage> {
        self.states(cursor, limit, Some(origin)).await
    }

    async fn snapshot(&self, after: Option<String>, limit: u64) -> Result<(Cursor, SnapshotPage)> {
        self.snapshot_of(after, limit, None).await
    }

    async fn snapshot_excluding(
        &self,
        after: Option<String>,
        limit: u64,
        origin: NodeId,
    ) -> Result<(Cursor, SnapshotPage)> {
        self.snapshot_of(after, limit, Some(origin)).await
    }
}

impl UserHub<'_> {
    /// A snapshot page of the user's rows, leaving out those whose every
    /// column `skip`'s pushes set.
    async fn snapshot_of(
        &self,
        after: Option<String>,
        limit: u64,
        skip: Option<NodeId>,
    ) -> Result<(Cursor, SnapshotPage)> {
        let visible = self.visible().await?;
        let tables = self.tables();
        // The user gets sealed tokens: the hub's own would name the last
        // row read, another user's if the page passed it over.
        let sealer = super::token::sealer(self.hub.connection(), &self.account.user)
            .await
            .map_err(Error::or_offline)?;
        let after = after.map(|t| sealer.open(&t)).transpose()?;
        let (cursor, mut page) = self
            .hub
            .snapshot_for(
                after,
                limit,
                Some(&visible),
                tables.as_deref().map(Vec::as_slice),
                skip,
            )
            .await?;
        page.next = page.next.map(|t| sealer.seal(&t)).transpose()?;
        Ok((cursor, page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::ChangeId;
    use crate::model::testing::{column, hlc, table};
    use crate::model::value::pk_key;
    use sea_orm::sea_query::ColumnType;

    fn spec(ownership: Ownership) -> TableSpec {
        TableSpec {
            ownership,
            ..table(
                "notes",
                &["id"],
                vec![
                    column("id", ColumnType::Integer, false),
                    column("owner", ColumnType::Text, false),
                    column("body", ColumnType::Text, false),
                ],
            )
        }
    }

    fn change(seq: u64, op: Op, id: i32, columns: &[(&str, &str)]) -> Change {
        Change {
            id: ChangeId {
                origin: NodeId([9; 16]),
                seq,
            },
            table: "notes".into(),
            pk: vec![("id".into(), Value::Int(Some(id)))],
            op,
            columns: columns
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Value::String(Some((*v).to_owned()))))
                .collect(),
            hlc: hlc(100 + seq, 9),
            base: vec![],
        }
    }

    fn owned_by(owner: &str) -> RowState {
        let mut s = RowState::default();
        s.set("owner", &Value::String(Some(owner.into())), hlc(1, 1));
        s
    }

    /// The verdicts of `bob` on `changes` in order, each with the state
    /// the hub holds of its row.
    fn verdicts(
        ownership: Ownership,
        changes: &[(Change, Option<RowState>)],
    ) -> Vec<Option<Refused>> {
        let bob = Account::new("bob").unwrap();
        let spec = spec(ownership);
        let mut batch = BatchOwners::default();
        changes
            .iter()
            .map(|(c, state)| {
                let key = pk_key(&[c.pk[0].1.clone()]).unwrap();
                bob.refusal(&spec, c, &key, state.as_ref(), &mut batch)
            })
            .collect()
    }

    #[test]
    fn a_user_writes_only_their_own_rows() {
        let owner = || Ownership::Owner("owner".to_owned());
        let refused = |v: &Option<Refused>, why: &str| {
            v.as_ref()
                .is_some_and(|r| r.reason.contains(why) && r.reason.contains("`bob`"))
        };
        let v = verdicts(
            owner(),
            &[
                // His own new row, then an edit and a delete of it.
                (
                    change(1, Op::Insert, 1, &[("owner", "bob"), ("body", "b")]),
                    None,
                ),
                (change(2, Op::Update, 1, &[("body", "c")]), None),
                (change(3, Op::Delete, 1, &[]), None),
                // Alice's rows: edit, re-create, delete.
                (
                    change(4, Op::Update, 2, &[("body", "x")]),
                    Some(owned_by("alice")),
                ),
                (
                    change(5, Op::Insert, 3, &[("owner", "bob"), ("body", "x")]),
                    Some(owned_by("alice")),
                ),
                (change(6, Op::Delete, 4, &[]), Some(owned_by("alice"))),
                // A row for alice; his row given to alice; a row never seen.
                (
                    change(7, Op::Insert, 5, &[("owner", "alice"), ("body", "x")]),
                    None,
                ),
                (
                    change(8, Op::Update, 6, &[("owner", "alice")]),
                    Some(owned_by("bob")),
                ),
                (change(9, Op::Update, 7, &[("body", "x")]), None),
                // An insert without its owner; a later change of a refused row.
                (change(10, Op::Insert, 8, &[("body", "x")]), None),
                (change(11, Op::Update, 5, &[("body", "y")]), None),
            ],
        );
        assert!(v[..3].iter().all(Option::is_none), "{v:?}");
        for i in 3..=5 {
            assert!(refused(&v[i], "belongs to another user"), "{i}: {v:?}");
        }
        assert!(refused(&v[6], "create a row of another user"), "{v:?}");
        assert!(refused(&v[7], "give the row to another user"), "{v:?}");
        assert!(refused(&v[8], "holds no row"), "{v:?}");
        assert!(refused(&v[9], "without its owner column"), "{v:?}");
        assert!(refused(&v[10], "earlier change of this row"), "{v:?}");
        // Only a row of another user, or one the hub never had, is parked
        // whatever the policy; a forged owner follows the policy.
        let always: Vec<bool> = v.iter().flatten().map(|r| r.parked_always).collect();
        assert_eq!(
            always,
            [true, true, true, false, false, true, false, false],
            "{v:?}"
        );
        // No reason names the other user.
        assert!(
            v.iter().flatten().all(|r| !r.reason.contains("alice")),
            "{v:?}"
        );
    }

    #[test]
    fn shared_tables_are_everyones_and_undeclared_ones_nobodys_unless_shared() {
        let edit = || {
            (
                change(1, Op::Update, 1, &[("body", "x")]),
                Some(owned_by("alice")),
            )
        };
        assert_eq!(verdicts(Ownership::Shared, &[edit()]), vec![None]);
        let v = verdicts(Ownership::Undeclared, &[edit()]);
        assert!(
            v[0].as_ref()
                .is_some_and(|r| r.reason.contains("declares no ownership") && !r.parked_always)
        );
        let bob = Account::new("bob").unwrap().sharing_undeclared(true);
        let (c, s) = edit();
        let key = pk_key(&[c.pk[0].1.clone()]).unwrap();
        let spec = spec(Ownership::Undeclared);
        assert_eq!(
            bob.refusal(&spec, &c, &key, s.as_ref(), &mut BatchOwners::default()),
            None
        );
    }

    #[test]
    fn the_authorization_rule_has_the_last_word() {
        let rule: Arc<Authorize> = Arc::new(|user: &str, c: &Change| {
            if c.op == Op::Delete {
                Err(format!("{user} never deletes"))
            } else {
                Ok(())
            }
        });
        let bob = Account::new("bob").unwrap().with_authorization(rule);
        let spec = spec(Ownership::Shared);
        let key = pk_key(&[Value::Int(Some(1))]).unwrap();
        let mut batch = BatchOwners::default();
        let ok = change(1, Op::Update, 1, &[("body", "x")]);
        assert_eq!(bob.refusal(&spec, &ok, &key, None, &mut batch), None);
        let del = change(2, Op::Delete, 1, &[]);
        let r = bob.refusal(&spec, &del, &key, None, &mut batch);
        assert!(r.is_some_and(|r| r.reason.contains("bob never deletes") && !r.parked_always));
        assert!(Account::new("").is_err());
    }
}
