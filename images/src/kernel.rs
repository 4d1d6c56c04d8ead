//! The silo guest kernel, built from Debian's Linux source by
//! `images/kernel/build.sh` and cached by the hash of its config.

use std::path::PathBuf;

use crate::{run_script, ImageError};

/// Paths of a built guest kernel.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// Uncompressed ELF kernel.
    pub vmlinux: PathBuf,
    /// Compressed bzImage of the same build.
    pub bz_image: PathBuf,
}

/// Builds the guest kernel if its cache entry is missing (about 3-5 minutes
/// on 2 cores, progress on stderr) and returns its paths.
pub fn guest_kernel() -> Result<GuestKernel, ImageError> {
    let dir = run_script("kernel/build.sh", "guest kernel")?;
    Ok(GuestKernel {
        vmlinux: dir.join("vmlinux"),
        bz_image: dir.join("bzImage"),
    })
}
