//! API access keys in the cluster's registry (`silo_keys`), beside the
//! configuration file's `[[credentials]]`: created and revoked through any
//! node (`/silo/access-keys`, admin keys only), they reach every node
//! through `NOTIFY silo_keys` and a full re-read after every reconnect of
//! the listener, as functions do.
//!
//! Each node authenticates from its in-memory copy ([`KeyRegistry::get`],
//! never a call to PostgreSQL on the request path): a revoked key stops
//! working on every node as soon as the notification arrives (about a
//! millisecond on a LAN); a node cut off from PostgreSQL keeps the keys it
//! last read. The secrets are stored in clear (SigV4 verification needs
//! them, as the configuration file does): the database is as sensitive as
//! the configuration.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::cluster::pg::{PgConn, PgError};
use crate::config::Credential;

/// The notification channel of key changes.
pub const KEYS_CHANNEL: &str = "silo_keys";

/// The registry's keys and this node's copy of them.
pub struct KeyRegistry {
    db: Arc<PgConn>,
    cache: RwLock<BTreeMap<String, Credential>>,
}

/// Errors creating a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// PostgreSQL refused or could not be reached.
    #[error(transparent)]
    Registry(#[from] PgError),
    /// No randomness for the secret.
    #[error("reading /dev/urandom for a new key: {0}")]
    Random(std::io::Error),
}

/// `n` random bytes from the kernel.
fn random(n: usize) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(KeyError::Random)?;
    Ok(b)
}

impl KeyRegistry {
    /// The keys of `db`, read once now (a failure is logged: the node
    /// starts with none and the listener's first re-read fills them).
    pub fn open(db: Arc<PgConn>) -> Self {
        let k = Self {
            db,
            cache: RwLock::new(BTreeMap::new()),
        };
        if let Err(e) = k.reload() {
            tracing::warn!(error = %e, "access keys not read from the registry");
        }
        k
    }

    /// Replaces this node's copy with the registry's keys (blocking).
    pub fn reload(&self) -> Result<(), PgError> {
        let rows = self.db.with("reading the access keys", |c| {
            c.query(
                "SELECT access_key_id, secret_access_key, tenants FROM silo_keys",
                &[],
            )
        })?;
        let mut keys = BTreeMap::new();
        for r in rows {
            let id: String = r.get(0);
            let tenants: Option<serde_json::Value> = r.get(2);
            let tenants = match tenants.map(serde_json::from_value::<Vec<String>>) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    // Never read as an administrator key by mistake.
                    tracing::error!(access_key = ?id, error = %e, "skipping an access key whose tenants are unreadable");
                    continue;
                }
            };
            keys.insert(
                id.clone(),
                Credential {
                    access_key_id: id,
                    secret_access_key: r.get(1),
                    tenants,
                },
            );
        }
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    /// The key `access_key_id` as this node last read it (never blocks on
    /// PostgreSQL).
    pub fn get(&self, access_key_id: &str) -> Option<Credential> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(access_key_id)
            .cloned()
    }

    /// Whether the registry holds any key (then no request is anonymous).
    pub fn any(&self) -> bool {
        !self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Every key as this node last read it, by id.
    pub fn list(&self) -> Vec<Credential> {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Makes a new key (an administrator's without `tenants`), stores it
    /// and tells every node.
    pub fn create(&self, tenants: Option<Vec<String>>) -> Result<Credential, KeyError> {
        let cred = Credential {
            access_key_id: format!("SILO{}", hex::encode_upper(random(8)?)),
            secret_access_key: hex::encode(random(20)?),
            tenants,
        };
        let t = cred.tenants.as_ref().map(|t| serde_json::json!(t));
        self.db.with("storing an access key", |c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO silo_keys (access_key_id, secret_access_key, tenants) VALUES ($1, $2, $3)",
                &[&cred.access_key_id, &cred.secret_access_key, &t],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&KEYS_CHANNEL, &cred.access_key_id])?;
            tx.commit()
        })?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cred.access_key_id.clone(), cred.clone());
        Ok(cred)
    }

    /// Revokes key `access_key_id` on every node; whether it existed.
    pub fn delete(&self, access_key_id: &str) -> Result<bool, PgError> {
        let n = self.db.with("revoking an access key", |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM silo_keys WHERE access_key_id = $1",
                &[&access_key_id],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&KEYS_CHANNEL, &access_key_id])?;
            tx.commit()?;
            Ok(n)
        })?;
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(access_key_id);
        Ok(n > 0)
    }
}
