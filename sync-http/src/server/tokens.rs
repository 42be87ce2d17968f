//! Bearer tokens of the hub's users, kept in the hub database as hashes.
//!
//! A token reads `tsk_<id>_<secret>`: the id (16 hex digits) finds its
//! row, the secret (64 hex digits, 256 random bits) is stored only as its
//! SHA-256 and compared in constant time. Revoking deletes the row: the
//! next request with it gets `401`.

use rand::RngCore;
use sea_orm::sea_query::{Alias, ColumnDef, Expr, ExprTrait, Order, Query, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use sync_core::{Error, ErrorKind, Result};

/// The table of tokens, in the hub database.
pub(crate) const TOKENS: &str = "_tidesync_tokens";

/// The tokens of a hub's users.
#[derive(Clone, Debug)]
pub struct Tokens {
    db: DatabaseConnection,
}

/// A token as [`Tokens::list`] shows it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its id (the part after `tsk_`), which `revoke` also takes.
    pub id: String,
    /// The user it signs in.
    pub user: String,
    /// When it was made (RFC 3339, UTC).
    pub created: String,
}

impl Tokens {
    /// The tokens of the hub database `db`, creating their table if needed.
    ///
    /// # Errors
    /// [`Error::Offline`] when the database cannot be reached.
    pub async fn open(db: DatabaseConnection) -> Result<Self> {
        let create = Table::create()
            .table(Alias::new(TOKENS))
            .if_not_exists()
            .col(
                ColumnDef::new(Alias::new("id"))
                    .string_len(32)
                    .not_null()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(Alias::new("user_name"))
                    .string_len(255)
                    .not_null(),
            )
            .col(ColumnDef::new(Alias::new("hash")).string_len(64).not_null())
            .col(
                ColumnDef::new(Alias::new("created"))
                    .string_len(40)
                    .not_null(),
            )
            .to_owned();
        let mut create = create;
        if db.get_database_backend() == sea_orm::DbBackend::MySql {
            // Names compared byte for byte, whatever the server's default.
            create.character_set("utf8mb4").collate("utf8mb4_bin");
        }
        // Servers starting at once on a new PostgreSQL hub race in
        // `CREATE TABLE IF NOT EXISTS`: the loser fails with a unique
        // violation in the catalog or "already exists", and finds the
        // table when it tries again.
        let mut attempts = 0;
        loop {
            match db.execute(&create).await.map_err(Error::from) {
                Ok(_) => break,
                Err(e)
                    if attempts < 10
                        && (e.kind() == ErrorKind::UniqueViolation
                            || e.to_string().contains("already exists")) =>
                {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25 * attempts)).await;
                }
                Err(e) => return Err(e.or_offline()),
            }
        }
        Ok(Tokens { db })
    }

    /// A new token for `user`: shown once, stored only as a hash.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty user name or one over 255 bytes;
    /// database errors.
    pub async fn add(&self, user: &str) -> Result<String> {
        if user.is_empty()
            || user.len() > 255
            || user.chars().any(char::is_control)
            || user.trim() != user
        {
            return Err(Error::Config(format!(
                "a user name is 1 to 255 bytes without control characters or \
                 surrounding spaces, not {user:?}"
            )));
        }
        let (id, secret) = {
            let mut rng = rand::rng();
            let mut id = [0u8; 8];
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut id);
            rng.fill_bytes(&mut secret);
            (hex(&id), hex(&secret))
        };
        let q = Query::insert()
            .into_table(Alias::new(TOKENS))
            .columns(["id", "user_name", "hash", "created"].map(Alias::new))
            .values_panic([
                id.clone().into(),
                user.into(),
                hash(&secret).into(),
                chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    .into(),
            ])
            .to_owned();
        self.db.execute(&q).await?;
        Ok(format!("tsk_{id}_{secret}"))
    }

    /// Every token, by user then creation.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list(&self) -> Result<Vec<TokenInfo>> {
        let q = Query::select()
            .columns(["id", "user_name", "created"].map(Alias::new))
            .from(Alias::new(TOKENS))
            .order_by(Alias::new("user_name"), Order::Asc)
            .order_by(Alias::new("created"), Order::Asc)
            .order_by(Alias::new("id"), Order::Asc)
            .to_owned();
        let mut out = Vec::new();
        for r in self.db.query_all(&q).await? {
            out.push(TokenInfo {
                id: r.try_get("", "id")?,
                user: r.try_get("", "user_name")?,
                created: r.try_get("", "created")?,
            });
        }
        Ok(out)
    }

    /// Revoke a token (given whole, or by its id), or every token of a
    /// user. Returns how many were revoked.
    ///
    /// # Errors
    /// Database errors.
    pub async fn revoke(&self, token_or_user: &str) -> Result<u64> {
        // A whole token, or an id `token list` showed (`tsk_<id>`, or the
        // bare id when no user is named so).
        let by_id = match parse(token_or_user) {
            Some((id, _)) => Some(id.to_owned()),
            None => match token_or_user.strip_prefix("tsk_").filter(|id| is_id(id)) {
                Some(id) => Some(id.to_owned()),
                None if is_id(token_or_user) && !self.has_user(token_or_user).await? => {
                    Some(token_or_user.to_owned())
                }
                None => None,
            },
        };
        let ids = match by_id {
            Some(id) => vec![id],
            None => self.ids_of(token_or_user).await?,
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let q = Query::delete()
            .from_table(Alias::new(TOKENS))
            .and_where(Expr::col(Alias::new("id")).is_in(ids))
            .to_owned();
        Ok(self.db.execute(&q).await?.rows_affected())
    }

    /// Whether `user` has a token.
    async fn has_user(&self, user: &str) -> Result<bool> {
        Ok(!self.ids_of(user).await?.is_empty())
    }

    /// The ids of `user`'s tokens: exactly that name (a MySQL table of an
    /// earlier release compares names without case or accents, so `Bob`
    /// and `bób` come back too, and are left out here).
    async fn ids_of(&self, user: &str) -> Result<Vec<String>> {
        let q = Query::select()
            .columns(["id", "user_name"].map(Alias::new))
            .from(Alias::new(TOKENS))
            .and_where(Expr::col(Alias::new("user_name")).eq(user))
            .to_owned();
        let mut ids = Vec::new();
        for r in self.db.query_all(&q).await? {
            let name: String = r.try_get("", "user_name")?;
            if name == user {
                ids.push(r.try_get("", "id")?);
            }
        }
        Ok(ids)
    }

    /// The user `token` signs in, if it is a live token of this hub.
    ///
    /// # Errors
    /// Database errors (the caller answers `503`, not `401`).
    pub async fn verify(&self, token: &str) -> Result<Option<String>> {
        let Some((id, secret)) = parse(token) else {
            return Ok(None);
        };
        let q = Query::select()
            .columns(["user_name", "hash"].map(Alias::new))
            .from(Alias::new(TOKENS))
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .to_owned();
        let Some(r) = self
            .db
            .query_one(&q)
            .await
            .map_err(|e| Error::from(e).or_offline())?
        else {
            return Ok(None);
        };
        let stored: String = r.try_get("", "hash")?;
        let given = hash(secret);
        if bool::from(stored.as_bytes().ct_eq(given.as_bytes())) {
            Ok(Some(r.try_get("", "user_name")?))
        } else {
            Ok(None)
        }
    }
}

/// `tsk_<id>_<secret>` split, if it has that shape.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("tsk_")?;
    let (id, secret) = rest.split_once('_')?;
    (is_id(id) && secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some((id, secret))
}

fn is_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_are_looked_up() {
        let good = format!("tsk_{}_{}", "0123456789abcdef", "a".repeat(64));
        assert_eq!(
            parse(&good),
            Some(("0123456789abcdef", "a".repeat(64).as_str()))
        );
        for bad in [
            "",
            "tsk_",
            "tsk_0123456789abcdef",
            &format!("tsk_0123456789abcde_{}", "a".repeat(64)),
            &format!("tsk_0123456789abcdef_{}", "a".repeat(63)),
            &format!("tsk_0123456789abcdef_{}", "g".repeat(64)),
            &format!("xsk_0123456789abcdef_{}", "a".repeat(64)),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_stored_hash_is_the_secrets_sha256() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
