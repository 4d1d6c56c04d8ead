//! Durable function state under the data directory:
//!
//! ```text
//! <data>/functions/<name>.json   one record per function
//! <data>/code/<sha256-hex>.zip   packages, content-addressed
//! ```
//!
//! Every file is written to a temporary name, flushed with fsync, renamed
//! over the final name, and the directory is fsynced: a crash at any point
//! leaves either the old or the new file, never a torn one. Code is written
//! before the record that names it, so an acknowledged record always has its
//! code. Code being stored for a record not yet written is pinned
//! ([`CodePin`]) so that a concurrent collection of unused code (after
//! another function's delete or update) cannot remove it in between.
//! Records that fail to parse at start are reported and skipped, not
//! fatal: one bad file never takes the other functions down.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// A function as stored and served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionRecord {
    /// Function name.
    pub name: String,
    /// Custom runtime id (`provided.al2023`, `provided.al2`, `provided`).
    pub runtime: String,
    /// IAM role ARN, stored as given.
    pub role: String,
    /// Handler (passed to the runtime as `_HANDLER`).
    pub handler: String,
    /// Description.
    pub description: String,
    /// Guest memory.
    pub memory_mib: u32,
    /// Invocation timeout.
    pub timeout_s: u32,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Whether each tenant gets its own environments (`PER_TENANT`).
    pub per_tenant: bool,
    /// SHA-256 of the package, hex.
    pub code_sha256: String,
    /// Package size in bytes.
    pub code_size: u64,
    /// Changes with every update; names the scheduler's function version.
    pub revision_id: String,
    /// ISO 8601 time of the last change.
    pub last_modified: String,
    /// Reserved concurrency, if set.
    pub reserved_concurrency: Option<u32>,
    /// Environments kept booted ahead of time and bound to no tenant, if
    /// set through the API (else the configuration's `[pools]` entry).
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// The egress policy set through the API, if any (else the
    /// configuration's); see [`crate::net`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::net::EgressPolicy>,
    /// Its asynchronous invocation settings
    /// (PutFunctionEventInvokeConfig), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_invoke_config: Option<crate::event_worker::EventInvokeConfig>,
    /// `LoggingConfig`: the log format and levels.
    #[serde(default)]
    pub logging: crate::logs::LoggingConfig,
    /// The tenant role set through the API, if any (else the
    /// configuration's); see [`crate::creds`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_role: Option<crate::creds::TenantRole>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("encoding the record of {0}: {1}")]
    Encode(String, serde_json::Error),
    /// The cluster's registry refused or could not be reached.
    #[error("registry: {0}")]
    Registry(#[from] crate::cluster::pg::PgError),
    /// A package fetched from the registry does not have the hash it is
    /// stored under: refused.
    #[error("the package stored under {expected} has SHA-256 {actual}: refused")]
    CodeHash {
        /// The hash it is stored under.
        expected: String,
        /// Its actual hash.
        actual: String,
    },
}

/// A function record [`Store::load`] skipped.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableRecord {
    /// The directory or the file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a function record.
    #[error("{}: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The data directory; in a cluster, a cache of the shared registry,
/// which it writes through ([`Store::with_registry`]).
pub struct Store {
    root: PathBuf,
    /// Packages being stored for records not yet written, with how many
    /// writers each; held across a whole collection.
    pins: Mutex<HashMap<String, usize>>,
    /// The cluster's registry: records and code are written there first,
    /// records read from it, code fetched from it on first use.
    registry: Option<std::sync::Arc<dyn crate::cluster::registry::Registry>>,
}

/// Keeps a package from being collected while the record naming it is
/// being written: returned by [`Store::put_code`], hold it until
/// [`Store::put`] of that record has returned.
#[must_use = "the code may be collected once the pin is dropped"]
pub struct CodePin<'a> {
    store: &'a Store,
    sha256_hex: String,
}

impl Drop for CodePin<'_> {
    fn drop(&mut self) {
        let mut pins = self.store.lock_pins();
        if let Some(n) = pins.get_mut(&self.sha256_hex) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.sha256_hex);
            }
        }
    }
}

/// Tells temporary files of concurrent writes of one path apart.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically and durably.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().expect("store paths have a parent");
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(data).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing directory", dir))
}

/// Mode of every file of the store: records hold environment variables
/// (secrets), packages the functions' code; only the daemon's user reads
/// them.
const FILE_MODE: u32 = 0o600;
/// Mode of the store's directories (and of the data directory, when the
/// daemon makes it).
const DIR_MODE: u32 = 0o700;

/// Makes `dir` (and missing parents) with [`DIR_MODE`], and sets that mode
/// on `dir` if it existed.
pub(crate) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io("creating", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(io("restricting", dir))
}

impl Store {
    /// Opens (creating) the data directory. The store's directories are
    /// made (or, made by an older daemon, set) 0700 and its files 0600.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        if !root.exists() {
            private_dir(root)?;
        }
        for sub in ["functions", "code"] {
            let d = root.join(sub);
            private_dir(&d)?;
            for e in std::fs::read_dir(&d).map_err(io("listing", &d))?.flatten() {
                let p = e.path();
                let mode = match e.file_type() {
                    Ok(t) if t.is_dir() => DIR_MODE,
                    Ok(t) if t.is_file() => FILE_MODE,
                    _ => continue,
                };
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(io("restricting", &p))?;
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            pins: Mutex::new(HashMap::new()),
            registry: None,
        })
    }

    /// Makes `registry` the source of truth: records and packages are
    /// written there first (then here), records are read from it, and a
    /// package missing here is fetched from it, its hash checked, and kept.
    pub fn with_registry(
        mut self,
        registry: std::sync::Arc<dyn crate::cluster::registry::Registry>,
    ) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The cluster's registry, if any.
    pub fn registry(&self) -> Option<&std::sync::Arc<dyn crate::cluster::registry::Registry>> {
        self.registry.as_ref()
    }

    /// Writes a record here only (a change another node made, read from
    /// the registry).
    pub fn put_local(&self, rec: &FunctionRecord) -> Result<(), StoreError> {
        let data =
            serde_json::to_vec_pretty(rec).map_err(|e| StoreError::Encode(rec.name.clone(), e))?;
        write_atomic(&self.record_path(&rec.name), &data)
    }

    /// Removes a record here only (another node deleted the function).
    pub fn delete_local(&self, name: &str) {
        let _ = std::fs::remove_file(self.record_path(name));
        self.collect_code();
    }

    fn lock_pins(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root.join("functions").join(format!("{name}.json"))
    }

    fn code_path(&self, sha256_hex: &str) -> PathBuf {
        self.root.join("code").join(format!("{sha256_hex}.zip"))
    }

    /// Stores a package under its hash (a no-op if already there) and pins
    /// it: it is not collected until the pin is dropped, so hold the pin
    /// until the record naming it is written.
    pub fn put_code(&self, sha256_hex: &str, zip: &[u8]) -> Result<CodePin<'_>, StoreError> {
        // Pinned before looking: a collection either ran wholly before
        // (then the file is written again here) or sees the pin.
        *self.lock_pins().entry(sha256_hex.to_string()).or_default() += 1;
        let pin = CodePin {
            store: self,
            sha256_hex: sha256_hex.to_string(),
        };
        if let Some(r) = &self.registry {
            r.put_code(sha256_hex, zip)?;
        }
        let p = self.code_path(sha256_hex);
        if !p.exists() {
            write_atomic(&p, zip)?;
        }
        Ok(pin)
    }

    /// Reads a package (in a cluster: fetched from the registry on first
    /// use, refused unless its SHA-256 is `sha256_hex`, then kept here).
    pub fn code(&self, sha256_hex: &str) -> Result<Vec<u8>, StoreError> {
        let p = self.code_path(sha256_hex);
        match (std::fs::read(&p), &self.registry) {
            (Err(e), Some(r)) if e.kind() == std::io::ErrorKind::NotFound => {
                let zip = r.code(sha256_hex)?.ok_or_else(|| StoreError::Io {
                    what: "fetching from the registry",
                    path: p.clone(),
                    source: e,
                })?;
                use sha2::Digest;
                let actual = hex::encode(sha2::Sha256::digest(&zip));
                if actual != sha256_hex {
                    return Err(StoreError::CodeHash {
                        expected: sha256_hex.to_string(),
                        actual,
                    });
                }
                write_atomic(&p, &zip)?;
                Ok(zip)
            }
            (r, _) => r.map_err(io("reading", &p)),
        }
    }

    /// Writes a function's record (create or replace); in a cluster, to
    /// the registry first.
    pub fn put(&self, rec: &FunctionRecord) -> Result<(), StoreError> {
        if let Some(r) = &self.registry {
            r.put(rec)?;
        }
        self.put_local(rec)
    }

    /// Removes a function's record; its code goes if no other record uses it.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let p = self.record_path(name);
        if let Some(r) = &self.registry {
            r.delete(name)?;
            if !p.exists() {
                return Ok(());
            }
        }
        std::fs::remove_file(&p).map_err(io("removing", &p))?;
        let dir = self.root.join("functions");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", &dir))?;
        self.collect_code();
        Ok(())
    }

    /// Removes packages no record names and none is pinned for.
    pub fn collect_code(&self) {
        let pins = self.lock_pins();
        let (records, _) = self.load_local();
        let used: std::collections::HashSet<String> =
            records.into_iter().map(|r| r.code_sha256).collect();
        let Ok(entries) = std::fs::read_dir(self.root.join("code")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(hash) = name.strip_suffix(".zip") {
                if !used.contains(hash) && !pins.contains_key(hash) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Every readable record, and why each file that is not was skipped;
    /// in a cluster, the registry's records (each also written here).
    pub fn load(&self) -> (Vec<FunctionRecord>, Vec<UnreadableRecord>) {
        let Some(r) = &self.registry else {
            return self.load_local();
        };
        match r.load() {
            Ok(records) => {
                for rec in &records {
                    let _ = self.put_local(rec);
                }
                (records, Vec::new())
            }
            Err(e) => {
                let path = self.root.join("functions");
                (
                    Vec::new(),
                    vec![UnreadableRecord::Read {
                        path,
                        source: std::io::Error::other(e.to_string()),
                    }],
                )
            }
        }
    }

    /// The records in the data directory.
    fn load_local(&self) -> (Vec<FunctionRecord>, Vec<UnreadableRecord>) {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let dir = self.root.join("functions");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(source) => {
                bad.push(UnreadableRecord::Read { path: dir, source });
                return (out, bad);
            }
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&p) {
                Ok(d) => match serde_json::from_slice(&d) {
                    Ok(r) => out.push(r),
                    Err(source) => bad.push(UnreadableRecord::Decode { path: p, source }),
                },
                Err(source) => bad.push(UnreadableRecord::Read { path: p, source }),
            }
        }
        out.sort_by(|a: &FunctionRecord, b| a.name.cmp(&b.name));
        (out, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, sha: &str) -> FunctionRecord {
        FunctionRecord {
            name: name.into(),
            runtime: "provided.al2023".into(),
            role: "arn:aws:iam::000000000000:role/r".into(),
            handler: "bootstrap".into(),
            description: String::new(),
            memory_mib: 128,
            timeout_s: 3,
            environment: BTreeMap::new(),
            per_tenant: true,
            code_sha256: sha.into(),
            code_size: 3,
            revision_id: "r1".into(),
            last_modified: "2026-11-24T00:00:00.000+0000".into(),
            reserved_concurrency: None,
            pool_size: None,
            network: None,
            event_invoke_config: None,
            logging: Default::default(),
            tenant_role: None,
        }
    }

    #[test]
    fn records_and_code_survive_reopen_and_bad_files_are_reported() {
        let dir = std::env::temp_dir().join(format!("silo-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        drop(s.put_code("aa", b"zip").unwrap());
        s.put(&record("f1", "aa")).unwrap();
        s.put(&record("f2", "aa")).unwrap();
        std::fs::write(dir.join("functions/broken.json"), b"{not json").unwrap();
        // A leftover temporary file from a crash mid-write is ignored.
        std::fs::write(dir.join("functions/.f3.json.tmp-1"), b"{").unwrap();
        let s = Store::open(&dir).unwrap();
        let (recs, bad) = s.load();
        assert_eq!(
            recs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["f1", "f2"]
        );
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].to_string().contains("broken.json"), "{bad:?}");
        assert_eq!(s.code("aa").unwrap(), b"zip");
        s.delete("f1").unwrap();
        assert_eq!(s.code("aa").unwrap(), b"zip", "still used by f2");
        s.delete("f2").unwrap();
        assert!(s.code("aa").is_err(), "unused code is collected");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Issue 11, item 7 (store race): CreateFunction stores its code (a
    /// no-op: another function has the same package), then DeleteFunction
    /// of that other function collects unused code before the new record
    /// is written. The code must survive: the steps in that racy order.
    #[test]
    fn code_being_stored_for_a_new_record_survives_a_concurrent_collection() {
        let dir = std::env::temp_dir().join(format!("silo-store-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        drop(s.put_code("aa", b"zip").unwrap());
        s.put(&record("old", "aa")).unwrap();
        // CreateFunction "new" with the same package: code first...
        let pending = s.put_code("aa", b"zip").unwrap();
        // ...DeleteFunction "old" collects meanwhile...
        s.delete("old").unwrap();
        s.collect_code();
        // ...then the record.
        s.put(&record("new", "aa")).unwrap();
        drop(pending);
        assert_eq!(
            s.code("aa").unwrap(),
            b"zip",
            "the new record's code is gone"
        );
        // Once nothing names it, it is collected.
        std::fs::remove_file(dir.join("functions/new.json")).unwrap();
        s.collect_code();
        assert!(s.code("aa").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
