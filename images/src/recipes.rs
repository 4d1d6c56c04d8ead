//! The image recipes (the guest kernel's build script and config fragment,
//! the managed runtimes' recipes with their pins, the KVM test host's fetch
//! script) travel inside the binary: [`dir`] writes them out, at first use,
//! to a private directory of the cache named by the hash of their content,
//! and the scripts run from there. So a `silo` copied to another machine,
//! installed from a package, or whose source checkout moved or is gone,
//! builds and finds the same images; nothing looks for the source tree it
//! was compiled in.
//!
//! The scripts key their cache entries by the content of their inputs
//! (`cat FILES | sha256sum`), never by their path, so an entry built from a
//! checkout's `images/` and one built from the written-out copy are the same
//! entry when the recipes are equal.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{cache_dir, ImageError};

/// One embedded recipe file: its path under `images/`, its content, whether
/// it is a script to execute.
struct Recipe {
    path: &'static str,
    content: &'static [u8],
    executable: bool,
}

macro_rules! recipe {
    ($path:literal, $exec:literal) => {
        Recipe {
            path: $path,
            content: include_bytes!(concat!("../", $path)),
            executable: $exec,
        }
    };
}

/// Every file a recipe reads (a test checks this list against `images/`).
const RECIPES: &[Recipe] = &[
    recipe!("kernel/build.sh", true),
    recipe!("kernel/silo-guest.config", false),
    recipe!("runtime/lib.sh", false),
    recipe!("runtime/python3.11.sh", true),
    recipe!("runtime/python3.11.debs", false),
    recipe!("runtime/python3.11.requirements.txt", false),
    recipe!("runtime/nodejs22.x.sh", true),
    recipe!("runtime/nodejs22.x.debs", false),
    recipe!("runtime/nodejs22.x.packages", false),
    recipe!("runtime/nodejs22.x-rapid-client.cjs", false),
    recipe!("testhost/fetch.sh", true),
];

/// Files under `images/{kernel,runtime,testhost}` that are not recipes a
/// build runs: the maintainers' re-pinning tool, and the test host's init
/// (compiled in by [`crate::testhost`]).
#[cfg(test)]
const NOT_EMBEDDED: &[&str] = &["runtime/pin-debs.sh", "testhost/init.sh"];

/// The hash naming the recipes' directory: of every file's path and content.
fn digest() -> String {
    let mut h = Sha256::new();
    for r in RECIPES {
        h.update(r.path.as_bytes());
        h.update([0]);
        h.update((r.content.len() as u64).to_le_bytes());
        h.update(r.content);
    }
    hex::encode(&h.finalize()[..8])
}

/// True when `dir` holds every recipe with the embedded content.
fn complete(dir: &Path) -> bool {
    RECIPES.iter().all(|r| {
        std::fs::read(dir.join(r.path)).is_ok_and(|c| c == r.content)
            && (!r.executable
                || std::fs::metadata(dir.join(r.path))
                    .is_ok_and(|m| m.permissions().mode() & 0o100 != 0))
    })
}

/// Writes every recipe under `dir` (created 0700, so only this user's silo
/// runs what is there).
fn write_all(dir: &Path) -> Result<(), ImageError> {
    let mkdir = |d: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(ImageError::io(format!("creating {}", d.display())))
    };
    mkdir(dir)?;
    for r in RECIPES {
        let path = dir.join(r.path);
        if let Some(parent) = path.parent() {
            mkdir(parent)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if r.executable { 0o700 } else { 0o600 })
            .open(&path)
            .map_err(ImageError::io(format!("creating {}", path.display())))?;
        f.write_all(r.content)
            .map_err(ImageError::io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

/// The directory holding the recipes (`kernel/build.sh`,
/// `runtime/<name>.sh`, ... as under `images/` in the source), written out
/// from this binary into `<cache>/recipes/<hash of their content>` if it is
/// not there whole yet (written to a temporary directory and renamed, so
/// concurrent callers are safe; a directory whose files differ from the
/// embedded ones is replaced).
pub fn dir() -> Result<PathBuf, ImageError> {
    dir_in(&cache_dir())
}

/// [`dir`] under the cache directory `cache`.
fn dir_in(cache: &Path) -> Result<PathBuf, ImageError> {
    let root = cache.join("recipes");
    let dir = root.join(digest());
    if complete(&dir) {
        return Ok(dir);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&root)
        .map_err(ImageError::io(format!("creating {}", root.display())))?;
    let tmp = root.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let result = write_all(&tmp).and_then(|()| {
        if dir.exists() && !complete(&dir) {
            // Damaged or unfinished by hand: put the embedded copy back.
            std::fs::remove_dir_all(&dir)
                .map_err(ImageError::io(format!("removing {}", dir.display())))?;
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(()),
            // Another process put it there first.
            Err(_) if complete(&dir) => Ok(()),
            Err(e) => Err(ImageError::io(format!("renaming to {}", dir.display()))(e)),
        }
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    tracing::debug!(dir = %dir.display(), "image recipes written out");
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file under `images/{kernel,runtime,testhost}` is embedded (or
    /// named as not needed by a build), with the content of the source.
    #[test]
    fn every_recipe_file_is_embedded() {
        let images = Path::new(env!("CARGO_MANIFEST_DIR"));
        for sub in ["kernel", "runtime", "testhost"] {
            for e in std::fs::read_dir(images.join(sub)).unwrap() {
                let name = format!("{sub}/{}", e.unwrap().file_name().to_string_lossy());
                assert!(
                    RECIPES.iter().any(|r| r.path == name) || NOT_EMBEDDED.contains(&name.as_str()),
                    "images/{name} is neither in RECIPES nor in NOT_EMBEDDED"
                );
            }
        }
        for r in RECIPES {
            assert_eq!(std::fs::read(images.join(r.path)).unwrap(), r.content);
        }
    }

    /// Written out whole, executable where a script, and rewritten when a
    /// file was changed.
    #[test]
    fn recipes_are_written_out_and_repaired() {
        let cache = std::env::temp_dir().join(format!("silo-recipes-test-{}", std::process::id()));
        let dir = dir_in(&cache).unwrap();
        std::fs::write(dir.join("runtime/lib.sh"), b"changed").unwrap();
        assert_eq!(dir_in(&cache).unwrap(), dir);
        assert!(dir.starts_with(cache.join("recipes")));
        assert!(complete(&dir));
        let mode = std::fs::metadata(dir.join("kernel/build.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
