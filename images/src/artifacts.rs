//! Static binaries built from a silo source checkout: the guest agent, the
//! example functions under `functions/`, and the VMM program `silo-vmm`
//! (when it is not installed beside `silo`); and where an installed `silo`
//! finds the ones installed with it ([`agent_for`], [`vmm_beside`]).
//!
//! The checkout is found at run time ([`source_root`]): the one whose
//! `target/` holds the running executable (a `cargo build` or `cargo test`
//! binary), never the path this crate was compiled in, so a `silo` copied
//! elsewhere or installed from a package does not depend on it.
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
    /// Building needs a source checkout and this program does not run from
    /// one.
    #[error(
        "building {what} needs a silo source checkout, and {exe} does not run from one's \
         target/ directory (set SILO_SOURCE_DIR to a checkout to build from it)"
    )]
    NoSource {
        /// What was to be built.
        what: String,
        /// The running executable.
        exe: PathBuf,
    },
    /// An installed `silo` without its guest agent.
    #[error(
        "the guest agent {} is missing: install it there with silo (the Debian package \
         does; deploy/build-deb.sh builds it), set SILO_SOURCE_DIR to a silo checkout to \
         build it from, or give silo serve --agent (or `agent = \"...\"`)",
        path.display()
    )]
    NoAgent {
        /// Where it was looked for.
        path: PathBuf,
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

/// Set to a silo source checkout to build guest binaries from it whatever
/// runs (else [`source_root`] finds the checkout from the executable).
pub const SOURCE_DIR_ENV: &str = "SILO_SOURCE_DIR";

/// The silo source checkout this process runs from: `$SILO_SOURCE_DIR`
/// when set, else the checkout whose `target/` directory holds the running
/// executable (`target/debug/silo`, a test binary in `target/debug/deps/`);
/// `None` for a `silo` installed or copied anywhere else.
pub fn source_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os(SOURCE_DIR_ENV) {
        return Some(PathBuf::from(d));
    }
    checkout_of(&std::env::current_exe().ok()?)
}

/// The checkout whose `target/` holds `exe`, if any: the nearest ancestor
/// named `target` whose parent is a silo workspace (its `Cargo.toml` and
/// `guest-agent/Cargo.toml` are there).
pub fn checkout_of(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .filter(|a| a.file_name().is_some_and(|n| n == "target"))
        .filter_map(Path::parent)
        .find(|root| {
            root.join("Cargo.toml").is_file() && root.join("guest-agent/Cargo.toml").is_file()
        })
        .map(Path::to_path_buf)
}

/// [`source_root`], or why building `what` is not possible.
fn checkout_for(what: &str) -> Result<PathBuf, ArtifactError> {
    source_root().ok_or_else(|| ArtifactError::NoSource {
        what: what.to_string(),
        exe: std::env::current_exe().unwrap_or_default(),
    })
}

/// Directory holding static guest builds (`<source>/target/static`).
fn static_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("SILO_STATIC_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("static"))
}

fn build_static(
    manifest: &str,
    package: Option<&str>,
    bin: &str,
) -> Result<PathBuf, ArtifactError> {
    let what = format!("static {bin}");
    let root = checkout_for(&what)?;
    let manifest = root.join(manifest);
    let target_dir = static_target_dir(&root);
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
    build_static("Cargo.toml", Some("silo-guest-agent"), "silo-guest-agent")
}

/// Where an installed `silo` at `silo_exe` keeps its guest agent:
/// `<prefix>/lib/silo/silo-guest-agent` for `<prefix>/bin/silo` (the
/// Debian package's `/usr/lib/silo/silo-guest-agent`).
pub fn installed_agent(silo_exe: &Path) -> PathBuf {
    let bin = silo_exe.parent().unwrap_or(Path::new("/"));
    bin.parent()
        .unwrap_or(Path::new("/"))
        .join("lib/silo/silo-guest-agent")
}

/// The guest agent for the `silo` at `silo_exe`: built from the checkout
/// it runs from (cargo keeps it current), else the one installed with it
/// ([`installed_agent`]).
pub fn agent_for(silo_exe: &Path) -> Result<PathBuf, ArtifactError> {
    if std::env::var_os(SOURCE_DIR_ENV).is_some() || checkout_of(silo_exe).is_some() {
        return guest_agent();
    }
    let path = installed_agent(silo_exe);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ArtifactError::NoAgent { path })
    }
}

/// Builds (if needed) the demo counter function (`functions/counter`, on the
/// official `lambda_runtime` crate) and returns the path of its binary, which
/// is the function's `bootstrap`.
pub fn counter_function() -> Result<PathBuf, ArtifactError> {
    build_static("functions/counter/Cargo.toml", None, "silo-counter-fn")
}

/// Builds (if needed) the VMM program `silo-vmm` from this source tree (a
/// static release build, like the guest binaries) and returns its path.
pub fn vmm() -> Result<PathBuf, ArtifactError> {
    build_static("Cargo.toml", Some("silo-vmm"), "silo-vmm")
}

/// The `silo-vmm` to run with the `silo` at `silo_exe`: `$SILO_VMM` when
/// set; built from the source tree (cargo keeps it current) when
/// `silo_exe` was built in a source checkout's `target/`, since a
/// `silo-vmm` lying beside it may predate the sources (`cargo build` of the
/// root package does not rebuild it); else the one beside `silo_exe`.
pub fn vmm_for(silo_exe: &Path) -> Result<PathBuf, ArtifactError> {
    if std::env::var_os("SILO_VMM").is_none()
        && checkout_of(silo_exe).is_some_and(|root| root.join("vmm/Cargo.toml").is_file())
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
