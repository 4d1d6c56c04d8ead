//! A built runtime's record of its own files: `MANIFEST.sha256` in the
//! cache entry, in `sha256sum`'s format (`<sha256>  <path>`, paths relative
//! to the entry), so `sha256sum -c MANIFEST.sha256` checks it by hand too.
//! The recipe writes it at the end of its build (every regular file of the
//! tree `rt/` and the archive `rt.cpio`); silo adds the shared image
//! `rt.img` when it makes it from the checked tree. Whoever uses a file of
//! the entry checks it here first: a file changed, truncated or removed
//! after the build is refused, naming the file.
//!
//! The manifest guards the entry against changes after the build, not
//! against whoever may rewrite the manifest with it: the cache directory
//! must be writable only by the user who builds and runs silo.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The manifest's file name in a cache entry.
pub const MANIFEST: &str = "MANIFEST.sha256";

/// Why a cache entry does not check out against its manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The entry has no manifest: not built by this silo, or unfinished.
    #[error(
        "{} is missing: the cache entry was not built by this version of silo \
         (rebuild it with `silo images build`)",
        path.display()
    )]
    Missing {
        /// The manifest's path.
        path: PathBuf,
    },
    /// A line is not `<sha256>  <path>`.
    #[error("{}: line {line} is not `<sha256>  <path>`", path.display())]
    Malformed {
        /// The manifest's path.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
    },
    /// A file the entry holds is not in its manifest.
    #[error("{} is not recorded in {}: it was not built with the entry", file.display(), manifest.display())]
    NotRecorded {
        /// The file.
        file: PathBuf,
        /// The manifest.
        manifest: PathBuf,
    },
    /// A file's content differs from what was recorded.
    #[error(
        "{} has SHA-256 {got}, but {} recorded {want} when it was built: \
         the file changed since (tampered with or truncated); rebuild it with `silo images build`",
        file.display(),
        manifest.display()
    )]
    Mismatch {
        /// The file.
        file: PathBuf,
        /// The manifest.
        manifest: PathBuf,
        /// The recorded SHA-256 (hex).
        want: String,
        /// The file's SHA-256 now (hex).
        got: String,
    },
    /// Reading or writing a file failed (a recorded file that is gone
    /// among them).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + '_ {
    move |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The SHA-256 of the file at `path`, in lower-case hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A cache entry's manifest: SHA-256 by path relative to the entry.
#[derive(Debug, Clone)]
pub struct Manifest {
    dir: PathBuf,
    entries: BTreeMap<String, String>,
}

impl Manifest {
    /// Reads the manifest of the cache entry `dir`.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing { path })
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let mut entries = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let bad = || ManifestError::Malformed {
                path: path.clone(),
                line: i + 1,
            };
            // sha256sum marks a line whose name it escaped with a leading
            // backslash (`\\` for `\`, `\n` for a line break).
            let (escaped, line) = match line.strip_prefix('\\') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (hash, name) = line.split_once(' ').ok_or_else(bad)?;
            // Text mode "  name" or binary mode " *name".
            let name = name
                .strip_prefix(' ')
                .or_else(|| name.strip_prefix('*'))
                .ok_or_else(bad)?;
            let valid = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
            let name = if escaped {
                unescape(name).ok_or_else(bad)?
            } else {
                name.to_string()
            };
            // Inside the entry only.
            let inside =
                !name.starts_with('/') && !name.split('/').any(|c| c.is_empty() || c == "..");
            if !valid || !inside {
                return Err(bad());
            }
            entries.insert(name, hash.to_ascii_lowercase());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            entries,
        })
    }

    /// The manifest's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(MANIFEST)
    }

    /// Whether `rel` (a path relative to the entry) is recorded.
    pub fn contains(&self, rel: &str) -> bool {
        self.entries.contains_key(rel)
    }

    /// Checks the file `rel` against its recorded SHA-256 and returns its
    /// path.
    pub fn verify(&self, rel: &str) -> Result<PathBuf, ManifestError> {
        let file = self.dir.join(rel);
        let Some(want) = self.entries.get(rel) else {
            return Err(ManifestError::NotRecorded {
                file,
                manifest: self.path(),
            });
        };
        let got = sha256_file(&file).map_err(io(&file))?;
        if &got != want {
            return Err(ManifestError::Mismatch {
                file,
                manifest: self.path(),
                want: want.clone(),
                got,
            });
        }
        Ok(file)
    }

    /// Checks every recorded file.
    pub fn verify_all(&self) -> Result<(), ManifestError> {
        self.entries
            .keys()
            .try_for_each(|rel| self.verify(rel).map(drop))
    }

    /// Checks the directory `rel` (e.g. `rt`): every file recorded under it
    /// matches, and it holds no regular file that is not recorded.
    pub fn verify_tree(&self, rel: &str) -> Result<(), ManifestError> {
        let prefix = format!("{rel}/");
        for name in self.entries.keys().filter(|n| n.starts_with(&prefix)) {
            self.verify(name)?;
        }
        let mut stack = vec![self.dir.join(rel)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let entry = entry.map_err(io(&dir))?;
                let path = entry.path();
                let kind = entry.file_type().map_err(io(&path))?;
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() {
                    let recorded = path
                        .strip_prefix(&self.dir)
                        .ok()
                        .and_then(|p| p.to_str())
                        .is_some_and(|p| self.entries.contains_key(p));
                    if !recorded {
                        return Err(ManifestError::NotRecorded {
                            file: path,
                            manifest: self.path(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the file `rel` as it is now (replacing any earlier record)
    /// and rewrites the manifest (a temporary file renamed over it).
    pub fn record(&mut self, rel: &str) -> Result<(), ManifestError> {
        let file = self.dir.join(rel);
        let hash = sha256_file(&file).map_err(io(&file))?;
        self.entries.insert(rel.to_string(), hash);
        let mut text = String::new();
        for (name, hash) in &self.entries {
            if name.contains(['\\', '\n']) {
                text.push('\\');
                text.push_str(hash);
                text.push_str("  ");
                text.push_str(&name.replace('\\', "\\\\").replace('\n', "\\n"));
            } else {
                text.push_str(hash);
                text.push_str("  ");
                text.push_str(name);
            }
            text.push('\n');
        }
        let path = self.path();
        let tmp = self
            .dir
            .join(format!(".{MANIFEST}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(&path)(e)
        })
    }
}

/// Undoes sha256sum's escaping of a name (`\\` and `\n`).
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("silo-manifest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("rt/lib")).unwrap();
        d
    }

    /// An entry whose manifest `sha256sum` wrote, as the recipe does.
    fn entry(name: &str) -> PathBuf {
        let d = tempdir(name);
        std::fs::write(d.join("rt/lib/a.so"), vec![7u8; 300_000]).unwrap();
        std::fs::write(d.join("rt/silo-runtime.json"), b"{}\n").unwrap();
        std::fs::write(d.join("rt/lib/odd\\name"), b"x").unwrap();
        std::fs::write(d.join("rt.cpio"), b"archive").unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg("find rt -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum rt.cpio")
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(d.join(MANIFEST), out.stdout).unwrap();
        d
    }

    #[test]
    fn a_fresh_entry_checks_out_and_a_recorded_file_is_kept() {
        let d = entry("fresh");
        let mut m = Manifest::read(&d).unwrap();
        m.verify_all().unwrap();
        m.verify_tree("rt").unwrap();
        assert!(m.contains("rt/lib/odd\\name"));
        std::fs::write(d.join("rt.img"), b"image").unwrap();
        m.record("rt.img").unwrap();
        let again = Manifest::read(&d).unwrap();
        assert_eq!(again.verify("rt.img").unwrap(), d.join("rt.img"));
        again.verify_all().unwrap();
        // sha256sum agrees with what was written.
        let check = Command::new("sha256sum")
            .args(["-c", "--quiet", MANIFEST])
            .current_dir(&d)
            .status()
            .unwrap();
        assert!(check.success());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_changed_truncated_removed_or_added_after_the_build_is_named() {
        let d = entry("tampered");
        let m = Manifest::read(&d).unwrap();
        // Changed, same length.
        std::fs::write(d.join("rt.cpio"), b"archivE").unwrap();
        let e = m.verify("rt.cpio").unwrap_err().to_string();
        assert!(e.contains("rt.cpio") && e.contains("changed"), "{e}");
        assert!(m.verify_all().is_err());
        // Truncated.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("rt/lib/a.so"))
            .unwrap();
        f.set_len(4096).unwrap();
        let e = m.verify_tree("rt").unwrap_err().to_string();
        assert!(e.contains("rt/lib/a.so"), "{e}");
        std::fs::write(d.join("rt/lib/a.so"), vec![7u8; 300_000]).unwrap();
        m.verify_tree("rt").unwrap();
        // Added.
        std::fs::write(d.join("rt/lib/evil.so"), b"x").unwrap();
        let e = m.verify_tree("rt").unwrap_err().to_string();
        assert!(
            e.contains("rt/lib/evil.so") && e.contains("not recorded"),
            "{e}"
        );
        std::fs::remove_file(d.join("rt/lib/evil.so")).unwrap();
        // Removed.
        std::fs::remove_file(d.join("rt/silo-runtime.json")).unwrap();
        let e = m.verify_tree("rt").unwrap_err().to_string();
        assert!(e.contains("rt/silo-runtime.json"), "{e}");
        // Not recorded at all.
        let e = m.verify("rt.img").unwrap_err().to_string();
        assert!(e.contains("rt.img") && e.contains("not recorded"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_or_malformed_manifest_is_refused_naming_it() {
        let d = tempdir("missing");
        let e = Manifest::read(&d).unwrap_err().to_string();
        assert!(
            e.contains(MANIFEST) && e.contains("silo images build"),
            "{e}"
        );
        std::fs::write(d.join(MANIFEST), "abc  rt.cpio\n").unwrap();
        let e = Manifest::read(&d).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let h = "0".repeat(64);
        std::fs::write(d.join(MANIFEST), format!("{h}  ../etc/passwd\n")).unwrap();
        assert!(Manifest::read(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
