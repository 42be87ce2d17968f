//! Snapshot tokens of an account: the hub's own token (the last stored key
//! of a page, see `snapshot::page`) sealed with ChaCha20-Poly1305 under a
//! key of the hub database, bound to the user. A user learns nothing from
//! a token (it may name another user's row, which the page passed over),
//! cannot make one, and cannot use another user's; every server on the hub
//! database takes the tokens of another.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sea_orm::ConnectionTrait;

use super::tables::HUB_META;
use crate::model::error::{Error, Result};

/// The hub metadata key of the secret key, 32 random bytes in hex.
pub(crate) const KEY: &str = "snapshot_token_key";

/// What a sealed token starts with.
const PREFIX: &str = "s1.";
/// What a token is bound to besides the user.
const CONTEXT: &[u8] = b"tidesync snapshot token v1\0";
const NONCE_LEN: usize = 12;

/// A new random key, hex (stored at install, once: see `tables::install`).
pub(crate) fn new_key() -> String {
    hex(&ChaCha20Poly1305::generate_key(&mut OsRng))
}

/// The sealer of `user`'s tokens, with the hub's key (made now if the hub
/// has none yet: installed by an earlier release).
pub(crate) async fn sealer<C: ConnectionTrait>(db: &C, user: &str) -> Result<Sealer> {
    let key = match HUB_META.read(db, KEY).await? {
        Some(k) => k,
        None => {
            HUB_META.insert_if_missing(db, KEY, &new_key()).await?;
            HUB_META.require(db, KEY).await?
        }
    };
    let key: [u8; 32] = unhex(&key)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| Error::Corrupt(format!("hub metadata `{KEY}` is not 32 bytes of hex")))?;
    Ok(Sealer {
        cipher: ChaCha20Poly1305::new(&Key::from(key)),
        aad: [CONTEXT, user.as_bytes()].concat(),
    })
}

/// Seals and opens one user's tokens.
pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
    aad: Vec<u8>,
}

impl Sealer {
    /// `token` sealed: `s1.` and the hex of a random nonce and the
    /// ciphertext with its tag.
    pub(crate) fn seal(&self, token: &str) -> Result<String> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: token.as_bytes(),
                    aad: &self.aad,
                },
            )
            .map_err(|_| Error::Config("snapshot token could not be sealed".into()))?;
        Ok(format!("{PREFIX}{}{}", hex(&nonce), hex(&sealed)))
    }

    /// The token `sealed` holds, if this hub sealed it for this user.
    pub(crate) fn open(&self, sealed: &str) -> Result<String> {
        let bad = || Error::Config("snapshot token is not one the hub gave this user".into());
        let bytes = sealed
            .strip_prefix(PREFIX)
            .and_then(unhex)
            .filter(|b| b.len() > NONCE_LEN)
            .ok_or_else(bad)?;
        let (nonce, msg) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad())?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg,
                    aad: &self.aad,
                },
            )
            .map_err(|_| bad())?;
        String::from_utf8(plain).map_err(|_| bad())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(key: &[u8; 32], user: &str) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(*key)),
            aad: [CONTEXT, user.as_bytes()].concat(),
        }
    }

    #[test]
    fn a_token_opens_only_for_its_user_and_key() {
        let plain = r#"["notes","[{\"String\":\"alice-secret\"}]",1]"#;
        let alice = sealer(&[7; 32], "alice");
        let sealed = alice.seal(plain).unwrap();
        assert!(!sealed.contains("notes") && !sealed.contains("alice"));
        assert_ne!(sealed, alice.seal(plain).unwrap(), "a nonce per token");
        assert_eq!(alice.open(&sealed).unwrap(), plain);
        assert!(sealer(&[7; 32], "bob").open(&sealed).is_err());
        assert!(sealer(&[8; 32], "alice").open(&sealed).is_err());
        let mut forged = sealed.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
        assert!(alice.open(std::str::from_utf8(&forged).unwrap()).is_err());
        for bad in [plain, "", "s1.", "s1.00", "s1.zz", "s1.é"] {
            assert!(alice.open(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert_eq!(new_key().len(), 64);
    }
}
