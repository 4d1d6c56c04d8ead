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

/// Longest symlink target read.
const MAX_LINK_TARGET: u64 = 4096;

/// Checks and unpacks a package in memory. Sizes are counted as the
/// entries actually inflate, whatever the zip declares: reading stops (and
/// the package is refused) one byte past [`MAX_UNZIPPED`] in all.
pub fn unpack(zip_bytes: &[u8]) -> Result<Vec<Entry>, PackageError> {
    with_bootstrap(walk(zip_bytes, true)?)
}

/// Checks a package as [`unpack`] does without keeping file contents: the
/// memory it takes stays small whatever the package inflates to.
pub fn check(zip_bytes: &[u8]) -> Result<(), PackageError> {
    with_bootstrap(walk(zip_bytes, false)?).map(|_| ())
}

/// [`unpack`] for a function on a managed runtime (`python3.11`,
/// `nodejs22.x`): the same checks, but no `bootstrap` is needed (the
/// runtime brings its own).
pub fn unpack_code(zip_bytes: &[u8]) -> Result<Vec<Entry>, PackageError> {
    walk(zip_bytes, true).map(|(entries, _)| entries)
}

/// [`check`] for a function on a managed runtime: no `bootstrap` needed.
pub fn check_code(zip_bytes: &[u8]) -> Result<(), PackageError> {
    walk(zip_bytes, false).map(|_| ())
}

fn with_bootstrap(walked: (Vec<Entry>, bool)) -> Result<Vec<Entry>, PackageError> {
    match walked {
        (entries, true) => Ok(entries),
        (_, false) => Err(PackageError::NoBootstrap),
    }
}

/// Counts what is written to it, keeping nothing.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The package's entries (contents only if `keep`) and whether it has a
/// `bootstrap` at its root.
fn walk(zip_bytes: &[u8], keep: bool) -> Result<(Vec<Entry>, bool), PackageError> {
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
        // What is left of the limit; reading goes one byte past it, so an
        // entry that inflates to more than it declared is caught.
        let left = MAX_UNZIPPED - total;
        if f.size() > left {
            // Declared too large: refused without inflating.
            return Err(PackageError::TooLarge);
        }
        let entry_err = |e: std::io::Error| PackageError::Entry {
            name: name.clone(),
            reason: e.to_string(),
        };
        let mut data = Vec::new();
        let read = if keep || is_link {
            let cap = if is_link { MAX_LINK_TARGET } else { left + 1 };
            // Preallocate by the declared size only up to 1 MiB: it may lie.
            data.reserve(f.size().min(cap).min(1 << 20) as usize);
            (&mut f)
                .take(cap)
                .read_to_end(&mut data)
                .map_err(entry_err)? as u64
        } else {
            let mut n = Counter(0);
            std::io::copy(&mut (&mut f).take(left + 1), &mut n).map_err(entry_err)?;
            n.0
        };
        if read > left {
            return Err(PackageError::TooLarge);
        }
        total += read;
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
    Ok((entries, has_bootstrap))
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

#[cfg(test)]
mod bomb_tests {
    use super::*;

    /// A raw deflate stream (one fixed-Huffman block) inflating to
    /// `1 + 258 * matches` zero bytes: a literal 0, then matches of length
    /// 258 at distance 1.
    fn deflated_zeros(matches: usize) -> Vec<u8> {
        struct Bits {
            out: Vec<u8>,
            acc: u64,
            n: u32,
        }
        impl Bits {
            /// `len` bits of `v`, least significant first.
            fn put(&mut self, v: u64, len: u32) {
                self.acc |= v << self.n;
                self.n += len;
                while self.n >= 8 {
                    self.out.push(self.acc as u8);
                    self.acc >>= 8;
                    self.n -= 8;
                }
            }
            /// A Huffman code: most significant bit first.
            fn code(&mut self, code: u64, len: u32) {
                let rev = (0..len).fold(0, |r, i| r | (((code >> i) & 1) << (len - 1 - i)));
                self.put(rev, len);
            }
        }
        let mut b = Bits {
            out: Vec::new(),
            acc: 0,
            n: 0,
        };
        b.put(1, 1); // BFINAL
        b.put(1, 2); // BTYPE = fixed Huffman
        b.code(0x30, 8); // literal 0
        for _ in 0..matches {
            b.code(0xC5, 8); // length symbol 285: 258
            b.code(0, 5); // distance code 0: 1
        }
        b.code(0, 7); // end of block
        b.put(0, 7); // flush
        b.out
    }

    /// CRC-32 (IEEE), bit by bit: for small test data only.
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// A zip of one deflated `bootstrap` whose local header and central
    /// directory both declare `declared` bytes uncompressed and `crc`.
    fn lying_zip(deflated: &[u8], declared: u32, crc: u32) -> Vec<u8> {
        let name = b"bootstrap";
        let mut z = Vec::new();
        let u16le = |z: &mut Vec<u8>, v: u16| z.extend_from_slice(&v.to_le_bytes());
        let u32le = |z: &mut Vec<u8>, v: u32| z.extend_from_slice(&v.to_le_bytes());
        u32le(&mut z, 0x0403_4b50);
        for v in [20, 0, 8, 0, 0x21] {
            u16le(&mut z, v); // version, flags, deflate, time, date
        }
        u32le(&mut z, crc);
        u32le(&mut z, deflated.len() as u32);
        u32le(&mut z, declared);
        u16le(&mut z, name.len() as u16);
        u16le(&mut z, 0);
        z.extend_from_slice(name);
        z.extend_from_slice(deflated);
        let cd = z.len() as u32;
        u32le(&mut z, 0x0201_4b50);
        for v in [(3 << 8) | 20, 20, 0, 8, 0, 0x21] {
            u16le(&mut z, v); // made by Unix, needed, flags, deflate, time, date
        }
        u32le(&mut z, crc);
        u32le(&mut z, deflated.len() as u32);
        u32le(&mut z, declared);
        u16le(&mut z, name.len() as u16);
        for v in [0, 0, 0, 0] {
            u16le(&mut z, v); // extra, comment, disk, internal attributes
        }
        u32le(&mut z, 0o100755 << 16);
        u32le(&mut z, 0); // local header offset
        z.extend_from_slice(name);
        let cd_len = z.len() as u32 - cd;
        u32le(&mut z, 0x0605_4b50);
        for v in [0, 0, 1, 1] {
            u16le(&mut z, v);
        }
        u32le(&mut z, cd_len);
        u32le(&mut z, cd);
        u16le(&mut z, 0);
        z
    }

    /// Issue 11, item 7: an entry declaring 0 bytes that inflates to
    /// 300 MB is refused, counted by the bytes actually inflated.
    #[test]
    fn entries_are_counted_by_what_they_inflate_to_not_what_they_declare() {
        // The crafted zip is sound: a small one unpacks to its zeros.
        let zeros = vec![0u8; 1 + 4 * 258];
        let small = lying_zip(&deflated_zeros(4), zeros.len() as u32, crc32(&zeros));
        match unpack(&small).unwrap().as_slice() {
            [Entry::File(name, 0o755, data)] => {
                assert_eq!(name, "bootstrap");
                assert_eq!(data.len(), 1 + 4 * 258);
                assert!(data.iter().all(|b| *b == 0));
            }
            other => panic!("{other:?}"),
        }
        // (Its CRC is never reached: reading stops past the limit.)
        let bomb = lying_zip(&deflated_zeros(300 * 1024 * 1024 / 258), 0, 0);
        assert!(bomb.len() < 3 << 20, "{}", bomb.len());
        match unpack(&bomb) {
            Err(PackageError::TooLarge) => {}
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(e) => panic!("accepted, {} entries", e.len()),
        }
        match check(&bomb) {
            Err(PackageError::TooLarge) => {}
            other => panic!("check: {other:?}"),
        }
        check(&small).unwrap();
    }
}
