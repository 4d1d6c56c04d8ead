//! Function packages: Lambda-style zip files with a `bootstrap` at the root,
//! checked entry by entry before anything is unpacked.

use std::io::{Cursor, Read};

/// Most entries a package may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// Largest unzipped size, as Lambda (250 MB).
pub const MAX_UNZIPPED: u64 = 250 * 1024 * 1024;

/// What is wrong with a package; each names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Not a readable zip.
    #[error("the function package is not a valid zip file: {0}")]
    NotZip(String),
    /// Too many entries.
    #[error("the function package has {0} entries; the limit is {MAX_ENTRIES}")]
    TooManyEntries(usize),
    /// Unzipped size over the limit.
    #[error("the function package unzips to more than {MAX_UNZIPPED} bytes")]
    TooLarge,
    /// An entry's path escapes the task root or is otherwise unsafe.
    #[error("the function package entry {0:?} has an unsafe path (absolute, `..` or NUL)")]
    UnsafePath(String),
    /// A symlink points outside the package.
    #[error("the function package entry {name:?} is a symlink to {target:?}, outside the package")]
    UnsafeSymlink {
        /// The entry.
        name: String,
        /// Its target.
        target: String,
    },
    /// No `bootstrap` at the root.
    #[error("the function package has no `bootstrap` file at its root (custom runtimes start from ./bootstrap)")]
    NoBootstrap,
    /// An entry could not be read.
    #[error("cannot read function package entry {name:?}: {reason}")]
    Entry {
        /// The entry.
        name: String,
        /// Why.
        reason: String,
    },
}

/// One unpacked entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A file with permission bits and contents.
    File(String, u32, Vec<u8>),
    /// A symlink and its target.
    Symlink(String, String),
}

fn safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && !path.contains('\\')
        && path.split('/').all(|c| c != "..")
}

/// Checks and unpacks a package in memory.
pub fn unpack(zip_bytes: &[u8]) -> Result<Vec<Entry>, PackageError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(zip_bytes))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    if archive.len() > MAX_ENTRIES {
        return Err(PackageError::TooManyEntries(archive.len()));
    }
    let mut total = 0u64;
    let mut entries = Vec::with_capacity(archive.len());
    let mut has_bootstrap = false;
    for i in 0..archive.len() {
        let mut f = archive
            .by_index(i)
            .map_err(|e| PackageError::NotZip(e.to_string()))?;
        let name = f.name().to_string();
        let path = name.trim_end_matches('/').to_string();
        if !safe_relative(&path) {
            return Err(PackageError::UnsafePath(name));
        }
        let mode = f.unix_mode();
        let is_link = mode.is_some_and(|m| m & 0o170000 == 0o120000);
        if f.is_dir() {
            entries.push(Entry::Dir(path));
            continue;
        }
        total = total.saturating_add(f.size());
        if total > MAX_UNZIPPED {
            return Err(PackageError::TooLarge);
        }
        let mut data = Vec::with_capacity(f.size().min(MAX_UNZIPPED) as usize);
        (&mut f)
            .take(MAX_UNZIPPED + 1)
            .read_to_end(&mut data)
            .map_err(|e| PackageError::Entry {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        if is_link {
            let target = String::from_utf8_lossy(&data).to_string();
            let parent_depth = path.matches('/').count();
            let ups = target.split('/').filter(|c| *c == "..").count();
            if target.starts_with('/') || ups > parent_depth || target.contains('\0') {
                return Err(PackageError::UnsafeSymlink { name, target });
            }
            entries.push(Entry::Symlink(path, target));
            continue;
        }
        if path == "bootstrap" {
            has_bootstrap = true;
        }
        // Zips from tools without Unix modes: make bootstrap executable.
        let perm = match mode {
            Some(m) => m & 0o777,
            None if path == "bootstrap" => 0o755,
            None => 0o644,
        };
        entries.push(Entry::File(path, perm, data));
    }
    if !has_bootstrap {
        return Err(PackageError::NoBootstrap);
    }
    Ok(entries)
}

/// Builds a package zip from `(path, mode, contents)` triples (for tests,
/// the demo and the CLI).
pub fn make_zip(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, mode, data) in files {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        w.start_file(*name, opts).expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip finish").into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_files_with_modes() {
        let z = make_zip(&[
            ("bootstrap", 0o755, b"#!/bin/sh\n"),
            ("lib/data.txt", 0o644, b"x"),
        ]);
        let e = unpack(&z).unwrap();
        assert!(e.contains(&Entry::File(
            "bootstrap".into(),
            0o755,
            b"#!/bin/sh\n".to_vec()
        )));
        assert!(e.contains(&Entry::File("lib/data.txt".into(), 0o644, b"x".to_vec())));
    }

    #[test]
    fn bad_packages_are_refused_with_the_entry_named() {
        assert!(matches!(unpack(b"not a zip"), Err(PackageError::NotZip(_))));
        let z = make_zip(&[("handler.py", 0o644, b"")]);
        assert!(matches!(unpack(&z), Err(PackageError::NoBootstrap)));
        let z = make_zip(&[("bootstrap", 0o755, b""), ("../evil", 0o644, b"")]);
        let e = unpack(&z).unwrap_err();
        assert!(e.to_string().contains("../evil"), "{e}");
        let z = make_zip(&[("bootstrap", 0o755, b""), ("/etc/passwd", 0o644, b"")]);
        assert!(matches!(unpack(&z), Err(PackageError::UnsafePath(_))));
    }

    #[test]
    fn symlinks_must_stay_inside() {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.start_file("bootstrap", o).unwrap();
        w.write_all(b"x").unwrap();
        w.add_symlink("lib/ok", "../bootstrap", o).unwrap();
        w.add_symlink("escape", "../../etc/shadow", o).unwrap();
        let z = w.finish().unwrap().into_inner();
        let e = unpack(&z).unwrap_err();
        assert!(e.to_string().contains("escape"), "{e}");
    }
}
