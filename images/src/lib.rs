//! Images silo boots: the guest kernel, static guest binaries, small guest
//! initramfs images for tests, and the KVM test host (QEMU TCG with nested
//! SVM) that runs real guests on hosts without hardware KVM, read-only
//! filesystem images for virtio-pmem ([`fsimage`]), and the
//! [`placement`] of commands that boot microVMs (here or in the test host).

pub mod artifacts;
pub mod fsimage;
pub mod guest;
pub mod kernel;
pub mod manifest;
pub mod placement;
pub mod recipes;
pub mod runtime;
pub mod testhost;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors preparing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A build or fetch script failed.
    #[error("{what}: {script} failed ({status}); its output is above")]
    Script {
        /// What was being prepared.
        what: &'static str,
        /// The script.
        script: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// A cache entry does not match the manifest written when it was built.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }
}

/// Cache directory for built images (`$SILO_CACHE_DIR`, else `~/.cache/silo`).
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SILO_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    Path::new(&home).join(".cache").join("silo")
}

/// Runs the recipe `images/<script>` (from the copy this binary carries,
/// [`recipes::dir`]) under an exclusive lock on the cache (so parallel
/// tests build once); the script prints its output directory last.
fn run_script(script: &str, what: &'static str) -> Result<PathBuf, ImageError> {
    let path = recipes::dir()?.join(script);
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .map_err(ImageError::io(format!("creating {}", cache.display())))?;
    let lock_path = cache.join(".lock");
    let out = Command::new("flock")
        .arg(&lock_path)
        .arg(&path)
        .arg(&cache)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(ImageError::io(format!("running {}", path.display())))?;
    if !out.status.success() {
        return Err(ImageError::Script {
            what,
            script: path,
            status: out.status,
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or_default().trim();
    Ok(PathBuf::from(dir))
}
