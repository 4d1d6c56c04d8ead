//! Static binaries built from this source tree: the guest agent, the
//! example functions under `functions/`, and the VMM program `silo-vmm`
//! (when it is not installed beside `silo`).
//!
//! Guest binaries must be static (the guest has no libc); only the
//! `x86_64-unknown-linux-gnu` target is available, so they are built with
//! `-C target-feature=+crt-static` into `target/static/`. Cargo's own lock on
//! that directory serializes concurrent callers, and a second call is a no-op
//! build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors from building a static guest binary.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// `cargo` could not be started.
    #[error("could not run cargo to build {what}: {source}")]
    Spawn {
        /// What was being built.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The cargo build failed.
    #[error("building {what} failed (cargo exited with {status}); see the cargo output above")]
    Build {
        /// What was being built.
        what: String,
        /// Cargo's exit status.
        status: std::process::ExitStatus,
    },
    /// The build succeeded but the binary is not where cargo puts it.
    #[error("cargo built {what} but {path} does not exist")]
    Missing {
        /// What was being built.
        what: String,
        /// Where the binary was expected.
        path: PathBuf,
    },
}

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Root of the source tree this crate was compiled from.
pub fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("images/ has a parent")
        .to_path_buf()
}

/// Directory holding static guest builds (`<source>/target/static`).
fn static_target_dir() -> PathBuf {
    std::env::var_os("SILO_STATIC_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| source_root().join("target").join("static"))
}

fn build_static(
    manifest: &Path,
    package: Option<&str>,
    bin: &str,
) -> Result<PathBuf, ArtifactError> {
    let what = format!("static {bin}");
    let target_dir = static_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--bin")
        .arg(bin)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    if let Some(p) = package {
        cmd.arg("-p").arg(p);
    }
    tracing::info!(%bin, target_dir = %target_dir.display(), "building static guest binary");
    let status = cmd.status().map_err(|source| ArtifactError::Spawn {
        what: what.clone(),
        source,
    })?;
    if !status.success() {
        return Err(ArtifactError::Build { what, status });
    }
    let path = target_dir.join(TARGET).join("release").join(bin);
    if !path.is_file() {
        return Err(ArtifactError::Missing { what, path });
    }
    Ok(path)
}

/// Builds (if needed) the static guest agent and returns its path.
pub fn guest_agent() -> Result<PathBuf, ArtifactError> {
    build_static(
        &source_root().join("Cargo.toml"),
        Some("silo-guest-agent"),
        "silo-guest-agent",
    )
}

/// Builds (if needed) the demo counter function (`functions/counter`, on the
/// official `lambda_runtime` crate) and returns the path of its binary, which
/// is the function's `bootstrap`.
pub fn counter_function() -> Result<PathBuf, ArtifactError> {
    build_static(
        &source_root().join("functions/counter/Cargo.toml"),
        None,
        "silo-counter-fn",
    )
}

/// Builds (if needed) the VMM program `silo-vmm` from this source tree (a
/// static release build, like the guest binaries) and returns its path.
pub fn vmm() -> Result<PathBuf, ArtifactError> {
    build_static(
        &source_root().join("Cargo.toml"),
        Some("silo-vmm"),
        "silo-vmm",
    )
}

/// The `silo-vmm` to run with the `silo` at `silo_exe`: `$SILO_VMM` when
/// set; built from the source tree (cargo keeps it current) when
/// `silo_exe` was built in this source tree's `target/`, since a
/// `silo-vmm` lying beside it may predate the sources (`cargo build` of the
/// root package does not rebuild it); else the one beside `silo_exe`.
pub fn vmm_for(silo_exe: &Path) -> Result<PathBuf, ArtifactError> {
    if std::env::var_os("SILO_VMM").is_none()
        && silo_exe.starts_with(source_root().join("target"))
        && source_root().join("vmm/Cargo.toml").is_file()
    {
        return vmm();
    }
    Ok(vmm_beside(silo_exe))
}

/// Where `silo-vmm` is for a `silo` at `silo_exe`: `$SILO_VMM` when set,
/// else beside `silo_exe` (where `cargo build` and `cargo install` put it).
pub fn vmm_beside(silo_exe: &Path) -> PathBuf {
    match std::env::var_os("SILO_VMM") {
        Some(p) => PathBuf::from(p),
        None => silo_exe.with_file_name("silo-vmm"),
    }
}
