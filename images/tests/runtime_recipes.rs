//! The runtime recipes' supply chain on the host, no guest: a Debian
//! package whose download does not have its pinned SHA-256 is refused (and
//! not unpacked), with the same function the recipes call
//! (`fetch_debian_packages` in `images/runtime/lib.sh`), against Debian's
//! real archive; a runtime's cache entry changed after its build is rebuilt
//! by the builder and refused by its user ([`RuntimeImage::verified`]),
//! naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use silo_images::runtime::{RuntimeImage, ARCHIVE, SHARED_IMAGE};

fn runtime_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime")
}

/// This process's scratch directory `tag` (see [`scratch`]).
fn scratch_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("silo-recipes-{tag}-{}", std::process::id()))
}

/// A new, empty [`scratch_dir`].
fn scratch(tag: &str) -> PathBuf {
    let d = scratch_dir(tag);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The zlib1g line the python3.11 runtime pins ("package version sha256").
fn zlib_pin() -> (String, String, String) {
    let pins = std::fs::read_to_string(runtime_dir().join("python3.11.debs")).unwrap();
    let line = pins
        .lines()
        .find(|l| l.starts_with("zlib1g "))
        .expect("python3.11.debs pins zlib1g");
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[0].into(), f[1].into(), f[2].into())
}

/// Runs the recipes' `fetch_debian_packages` in a fresh directory for the
/// one pin line `pin`: (success, stderr, the directory).
fn fetch(tag: &str, pin: &str) -> (bool, String, PathBuf) {
    let dir = scratch(tag);
    let pins = dir.join("pins.debs");
    std::fs::write(&pins, format!("# one package\n{pin}\n")).unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = r#"set -euo pipefail
runtime=pin-test here="$1" pins="$2"
source "$here/lib.sh"
inputs="$(grep -v '^[[:space:]]*\(#\|$\)' "$pins")"
work="$PWD"
fetch_debian_packages
"#;
    let out = Command::new("bash")
        .args(["-c", script, "bash"])
        .arg(runtime_dir())
        .arg(&pins)
        .current_dir(&work)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    (out.status.success(), stderr, work)
}

fn unpacked_zlib(work: &Path) -> bool {
    [
        "lib/x86_64-linux-gnu/libz.so.1",
        "usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .iter()
    .any(|p| work.join("root").join(p).exists())
}

#[test]
fn a_debian_package_whose_sha256_is_not_the_pinned_one_is_refused() {
    let (p, v, sha) = zlib_pin();
    // The pin as committed: downloaded, checked and unpacked.
    let (ok, stderr, work) = fetch("pinned", &format!("{p} {v} {sha}"));
    assert!(ok, "the pinned zlib1g was not taken: {stderr}");
    assert!(unpacked_zlib(&work), "zlib1g was not unpacked");
    // The same package and version, another pinned hash: refused before
    // anything is unpacked, naming the file, both hashes and the pins.
    let mut wrong = sha.clone().into_bytes();
    wrong[63] = if wrong[63] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let (ok, stderr, work) = fetch("tampered", &format!("{p} {v} {wrong}"));
    assert!(
        !ok,
        "a .deb whose SHA-256 differs from its pin was accepted"
    );
    assert!(
        stderr.contains("refusing")
            && stderr.contains("zlib1g")
            && stderr.contains(&sha)
            && stderr.contains(&wrong)
            && stderr.contains("pins.debs"),
        "{stderr}"
    );
    assert!(!unpacked_zlib(&work), "the refused .deb was unpacked");
    for tag in ["pinned", "tampered"] {
        let _ = std::fs::remove_dir_all(scratch_dir(tag));
    }
}

/// Copies the files of `from` (a built entry) the daemon may use into a
/// new directory, as an operator's `[runtimes]` entry.
fn copy_entry(from: &RuntimeImage, tag: &str) -> RuntimeImage {
    let dir = scratch(tag);
    for f in [ARCHIVE, SHARED_IMAGE, silo_images::manifest::MANIFEST] {
        std::fs::copy(from.dir.join(f), dir.join(f)).unwrap();
    }
    RuntimeImage::at(&from.name, dir)
}

#[test]
fn a_runtime_entry_changed_after_its_build_is_refused_by_its_user_and_rebuilt_by_its_builder() {
    // A cache of its own (this test's process only): the build takes
    // ~15 s the first time (Debian and PyPI downloads).
    let cache = scratch("cache");
    std::env::set_var("SILO_CACHE_DIR", &cache);
    let built = silo_images::runtime::runtime_image("python3.11").unwrap();
    assert!(built.dir.starts_with(&cache));
    built.verified(SHARED_IMAGE).unwrap();
    built.verified(ARCHIVE).unwrap();

    // The user (the daemon): a changed byte in the shared image, a
    // truncated archive, a missing manifest: each refused, naming the file.
    let copy = copy_entry(&built, "copy");
    let img = copy.dir.join(SHARED_IMAGE);
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&img, &bytes).unwrap();
    let e = copy.verified(SHARED_IMAGE).unwrap_err().to_string();
    assert!(
        e.contains(&img.display().to_string()) && e.contains("changed"),
        "{e}"
    );
    let cpio = copy.dir.join(ARCHIVE);
    let len = std::fs::metadata(&cpio).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cpio)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = copy.verified(ARCHIVE).unwrap_err().to_string();
    assert!(e.contains(&cpio.display().to_string()), "{e}");
    std::fs::remove_file(copy.manifest()).unwrap();
    let e = copy.verified(ARCHIVE).unwrap_err().to_string();
    assert!(
        e.contains("MANIFEST.sha256") && e.contains("silo images build"),
        "{e}"
    );

    // The builder: a file of the tree changed in the cache itself makes
    // the next build start over rather than take the entry.
    let py = built.tree().join("usr/bin/python3.11");
    std::fs::write(&py, b"#!/bin/sh\necho not python\n").unwrap();
    let rebuilt = silo_images::runtime::runtime_image("python3.11").unwrap();
    assert_eq!(rebuilt.dir, built.dir, "same inputs, same entry");
    assert_ne!(
        std::fs::read(&py).unwrap(),
        b"#!/bin/sh\necho not python\n",
        "the changed interpreter was kept"
    );
    rebuilt.verified(SHARED_IMAGE).unwrap();
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::remove_dir_all(&copy.dir).unwrap();
}
