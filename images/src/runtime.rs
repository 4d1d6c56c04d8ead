//! Managed runtimes (`python3.11`, `nodejs22.x`): a root-like tree of
//! registry packages (Debian's CPython and the libraries it loads with the
//! `awslambdaric` wheels from PyPI; Node.js and `aws-lambda-ric` from npm)
//! built by `images/runtime/<name>.sh`, cached by the hash of its
//! inputs, with a `silo-runtime.json` that tells the guest agent how to start
//! it. The guest sees the tree at [`GUEST_ROOT`], either copied into each
//! VM's initramfs ([`RuntimeImage::cpio`]) or as one shared read-only image.

use std::path::PathBuf;

use crate::{run_script, ImageError};

/// Managed runtimes this build can make, by Lambda runtime id.
pub const MANAGED_RUNTIMES: [&str; 2] = ["python3.11", "nodejs22.x"];

/// Where the runtime tree is in the guest (mounted or unpacked there).
pub const GUEST_ROOT: &str = "/rt";

/// The file at the tree's root that describes how to start the runtime.
/// (Both deliveries are built: `rt.cpio` by the recipe, `rt.img` from the
/// tree right after.)
pub const DESCRIPTOR: &str = "silo-runtime.json";

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

    /// [`RuntimeImage::shared_image`], made from the tree now if missing
    /// (EROFS, [`crate::fsimage::build_fs_image`]: reproducible, written to a
    /// temporary file and renamed, so concurrent callers are safe).
    pub fn ensure_shared_image(&self) -> Result<PathBuf, ImageError> {
        // One maker at a time in this process: the temporary file is named
        // by process id (other processes write their own and rename).
        static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = MAKING.lock().unwrap_or_else(|p| p.into_inner());
        let out = self.dir.join("rt.img");
        if !out.is_file() {
            crate::fsimage::build_fs_image(&self.tree(), &out)?;
        }
        Ok(out)
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
/// `images/runtime/<name>.sh`, and its shared read-only image, and returns
/// it.
pub fn runtime_image(name: &str) -> Result<RuntimeImage, RuntimeError> {
    if !MANAGED_RUNTIMES.contains(&name) {
        return Err(RuntimeError::Unknown {
            name: name.to_string(),
        });
    }
    let dir = run_script(&format!("runtime/{name}.sh"), "managed runtime image")?;
    let image = RuntimeImage::at(name, dir);
    image.ensure_shared_image()?;
    Ok(image)
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
