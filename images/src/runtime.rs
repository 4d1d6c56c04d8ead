//! Managed runtimes (`python3.11`, `nodejs22.x`): a root-like tree of
//! registry packages (Debian's CPython and the libraries it loads with the
//! `awslambdaric` wheels from PyPI; Node.js and `aws-lambda-ric` from npm)
//! built by `images/runtime/<name>.sh`, cached by the hash of its
//! inputs, with a `silo-runtime.json` that tells the guest agent how to start
//! it. The guest sees the tree at [`GUEST_ROOT`], either copied into each
//! VM's initramfs ([`RuntimeImage::cpio`]) or as one shared read-only image.
//!
//! Every input is pinned by hash (Debian packages in `<name>.debs`, npm
//! packages by their integrity, PyPI wheels in the requirements file), and
//! every file built is recorded in the entry's manifest
//! ([`crate::manifest`]): [`runtime_image`] rebuilds an entry that no
//! longer matches it, and [`RuntimeImage::verified`] refuses one.

use std::path::PathBuf;

use crate::manifest::{Manifest, ManifestError};
use crate::{run_script, ImageError};

/// Managed runtimes this build can make, by Lambda runtime id.
pub const MANAGED_RUNTIMES: [&str; 2] = ["python3.11", "nodejs22.x"];

/// Where the runtime tree is in the guest (mounted or unpacked there).
pub const GUEST_ROOT: &str = "/rt";

/// The file at the tree's root that describes how to start the runtime.
/// (Both deliveries are built: `rt.cpio` by the recipe, `rt.img` from the
/// tree right after.)
pub const DESCRIPTOR: &str = "silo-runtime.json";

/// The tree's newc archive in a cache entry (the copy-per-VM delivery).
pub const ARCHIVE: &str = "rt.cpio";

/// The tree's read-only filesystem image in a cache entry (the shared
/// delivery, virtio-pmem).
pub const SHARED_IMAGE: &str = "rt.img";

/// A built runtime.
#[derive(Debug, Clone)]
pub struct RuntimeImage {
    /// Lambda runtime id, e.g. `python3.11`.
    pub name: String,
    /// The cache entry: `rt/` (the tree) and `rt.cpio`.
    pub dir: PathBuf,
}

impl RuntimeImage {
    /// A runtime already built (or copied) into `dir`.
    pub fn at(name: &str, dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            dir: dir.into(),
        }
    }

    /// The tree (its root becomes [`GUEST_ROOT`] in the guest).
    pub fn tree(&self) -> PathBuf {
        self.dir.join("rt")
    }

    /// The tree under `/rt` as an uncompressed newc archive, to append to a
    /// VM's initramfs (the copy-per-VM delivery).
    pub fn cpio(&self) -> PathBuf {
        self.dir.join("rt.cpio")
    }

    /// The tree as one read-only filesystem image (`rt.img`), shared by
    /// every VM of the runtime over virtio-pmem, if it has been made.
    pub fn shared_image(&self) -> Option<PathBuf> {
        Some(self.dir.join("rt.img")).filter(|p| p.is_file())
    }

    /// [`RuntimeImage::shared_image`], made from the tree now if it is
    /// missing or differs from its record (EROFS,
    /// [`crate::fsimage::build_fs_image`]: reproducible, written to a
    /// temporary file and renamed, so concurrent callers are safe). The
    /// tree is checked against the manifest first; a new image is recorded
    /// in it, a remade one must match its record.
    pub fn ensure_shared_image(&self) -> Result<PathBuf, ImageError> {
        // One maker at a time in this process: the temporary file is named
        // by process id (other processes write their own and rename).
        static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
        let mut manifest = Manifest::read(&self.dir)?;
        let recorded = manifest.contains(SHARED_IMAGE);
        if recorded && manifest.verify(SHARED_IMAGE).is_ok() {
            return Ok(self.dir.join(SHARED_IMAGE));
        }
        manifest.verify_tree("rt")?;
        let out = self.dir.join(SHARED_IMAGE);
        crate::fsimage::build_fs_image(&self.tree(), &out)?;
        if recorded {
            manifest.verify(SHARED_IMAGE)?;
        } else {
            manifest.record(SHARED_IMAGE)?;
        }
        Ok(out)
    }

    /// The entry's file `file` ([`ARCHIVE`], [`SHARED_IMAGE`], ...) once it
    /// has been checked against the manifest written when it was built:
    /// refused, naming the file, if it is missing, not recorded, or
    /// changed since. Builds nothing.
    pub fn verified(&self, file: &str) -> Result<PathBuf, ManifestError> {
        Manifest::read(&self.dir)?.verify(file)
    }

    /// The manifest written when the entry was built (copy it with the
    /// files taken from the entry: the daemon checks them against it).
    pub fn manifest(&self) -> PathBuf {
        self.dir.join(crate::manifest::MANIFEST)
    }

    /// The tree's size in KiB as the recipe measured it (`du -sk`).
    pub fn size_kib(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("SIZE_KIB"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Errors preparing a managed runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No recipe for this runtime id.
    #[error("no managed runtime {name:?}: this build offers {}", MANAGED_RUNTIMES.join(", "))]
    Unknown {
        /// The runtime id asked for.
        name: String,
    },
    /// The recipe failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Builds runtime `name` if its cache entry is missing (under a minute:
/// downloads from Debian, PyPI and npm, progress on stderr) with its recipe
/// `images/runtime/<name>.sh` (carried in the binary, [`crate::recipes`]), and its shared read-only image, checks every
/// file of the entry against its manifest, and returns it. An entry that
/// does not check out (changed, truncated or unfinished) is removed and
/// built again, once.
pub fn runtime_image(name: &str) -> Result<RuntimeImage, RuntimeError> {
    if !MANAGED_RUNTIMES.contains(&name) {
        return Err(RuntimeError::Unknown {
            name: name.to_string(),
        });
    }
    let build = || -> Result<RuntimeImage, ImageError> {
        let dir = run_script(&format!("runtime/{name}.sh"), "managed runtime image")?;
        Ok(RuntimeImage::at(name, dir))
    };
    let check = |image: &RuntimeImage| -> Result<(), ImageError> {
        image.ensure_shared_image()?;
        Manifest::read(&image.dir)?.verify_all()?;
        Ok(())
    };
    let image = build()?;
    match check(&image) {
        Ok(()) => Ok(image),
        Err(ImageError::Manifest(e)) => {
            eprintln!("[runtime {name}] {e}: building the entry again");
            tracing::warn!(runtime = %name, error = %e, "the cache entry does not check out: building it again");
            match std::fs::remove_dir_all(&image.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(
                        ImageError::io(format!("removing {}", image.dir.display()))(e).into(),
                    )
                }
                _ => {}
            }
            let image = build()?;
            check(&image)?;
            Ok(image)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runtime `name`'s cache entry for the recipe this binary carries
/// ([`crate::recipes`]), if it has been built ([`runtime_image`], `silo images build`);
/// `None` if not. Builds nothing, downloads nothing and takes no lock (an
/// entry appears whole): the recipe only computes its cache key. The
/// entry's files are not checked here: check the one used with
/// [`RuntimeImage::verified`].
pub fn built_runtime_image(name: &str) -> Result<Option<RuntimeImage>, RuntimeError> {
    if !MANAGED_RUNTIMES.contains(&name) {
        return Err(RuntimeError::Unknown {
            name: name.to_string(),
        });
    }
    let script = crate::recipes::dir()?.join(format!("runtime/{name}.sh"));
    let out = std::process::Command::new(&script)
        .arg(crate::cache_dir())
        .env("SILO_RUNTIME_LOOKUP", "1")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(ImageError::io(format!("running {}", script.display())))?;
    match out.status.code() {
        Some(0) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let dir = stdout.lines().last().unwrap_or_default().trim();
            Ok(Some(RuntimeImage::at(name, dir)))
        }
        Some(3) => Ok(None),
        _ => Err(ImageError::Script {
            what: "managed runtime lookup",
            script,
            status: out.status,
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_managed_runtime_has_a_recipe() {
        for name in MANAGED_RUNTIMES {
            let script =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("runtime/{name}.sh"));
            assert!(script.is_file(), "{} is missing", script.display());
        }
    }

    #[test]
    fn an_unknown_runtime_is_refused_naming_the_offered_ones() {
        let e = runtime_image("nodejs18.x").unwrap_err().to_string();
        assert!(
            e.contains("nodejs18.x") && e.contains("python3.11, nodejs22.x"),
            "{e}"
        );
    }
}
