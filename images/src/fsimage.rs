//! Read-only filesystem images for virtio-pmem: a directory tree becomes an
//! EROFS image (Debian's `erofs-utils`), byte for byte the same for the same
//! tree, which `silo-vmm --pmem IMAGE` shares with every VM and the guest
//! mounts with DAX ([`GUEST_MOUNT_COMMAND`]).
//!
//! Why EROFS: read-only by design (no journal, nothing to replay or
//! repair), a small driver, and DAX on pmem since Linux 5.15, so a guest
//! maps the image's pages straight into its processes and N VMs share the
//! host's one page-cache copy. Every regular file is stored uncompressed
//! and block-aligned (`-E noinline_data`): EROFS serves only such files
//! through DAX; a file with an inline tail would be copied into the guest's
//! page cache instead.
//!
//! Reproducible: timestamps, owners and the filesystem UUID are fixed, and
//! `mkfs.erofs` orders directory entries by name, so equal trees (names,
//! contents, modes, symlinks) give equal bytes whatever their mtimes,
//! owners or creation order.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::ImageError;

/// The `mkfs.erofs` program (Debian package `erofs-utils`).
pub const MKFS_EROFS: &str = "mkfs.erofs";
/// Filesystem UUID of every image (fixed, for reproducibility).
pub const FS_UUID: &str = "5110c0de-9e3f-4d6b-8a1e-00000000e20f";
/// Timestamp of every inode and of the image itself (seconds since 1970).
pub const FS_TIMESTAMP: u64 = 0;
/// Where the guest mounts the first image.
pub const GUEST_MOUNT_POINT: &str = "/opt/runtime";
/// The guest device of the first `--pmem` image (`/dev/pmem1` for the
/// second...). Linux registers pmem disks asynchronously: it may appear a
/// little after `/init` starts, so wait for it before mounting.
pub const GUEST_DEVICE: &str = "/dev/pmem0";
/// Filesystem type for mount(2).
pub const GUEST_FS_TYPE: &str = "erofs";
/// mount(2) data for a DAX mount; pass `MS_RDONLY` as the flags.
pub const GUEST_MOUNT_DATA: &str = "dax";
/// The guest command that mounts the first pmem image read-only with DAX
/// (busybox or util-linux `mount`; create the mount point first).
pub const GUEST_MOUNT_COMMAND: &str = "mount -t erofs -o ro,dax /dev/pmem0 /opt/runtime";

/// Builds the EROFS image of the directory `tree` at `out` (written to a
/// temporary file beside it, then renamed, so `out` is either absent, the
/// old image or the complete new one). Equal trees give equal bytes.
pub fn build_fs_image(tree: &Path, out: &Path) -> Result<(), ImageError> {
    let meta = std::fs::metadata(tree).map_err(ImageError::io(format!(
        "reading the image source directory {}",
        tree.display()
    )))?;
    if !meta.is_dir() {
        return Err(ImageError::Io {
            context: format!("building a filesystem image of {}", tree.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = out.with_file_name(format!(
        ".{}.tmp-{}",
        name.as_deref().unwrap_or("image"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    ensure_mkfs_erofs()?;
    let run = Command::new(MKFS_EROFS)
        .arg("-x-1")
        .arg("-Enoinline_data")
        .arg(format!("-T{FS_TIMESTAMP}"))
        .arg(format!("-U{FS_UUID}"))
        .arg("--all-root")
        .arg("--quiet")
        .arg(&tmp)
        .arg(tree)
        .output();
    let output = match run {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImageError::Io {
                context: format!("running {MKFS_EROFS} (apt-get install erofs-utils)"),
                source: e,
            })
        }
        Err(e) => return Err(ImageError::io(format!("running {MKFS_EROFS}"))(e)),
    };
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Io {
            context: format!(
                "{MKFS_EROFS} {} -> {} ({})",
                tree.display(),
                out.display(),
                output.status
            ),
            source: std::io::Error::other(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ),
        });
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImageError::io(format!("moving the image into place at {}", out.display()))(e)
    })
}

/// Installs Debian's `erofs-utils` if `mkfs.erofs` is missing (as the
/// kernel build installs the Linux source): `apt-get install`, with `sudo`
/// when not root, one installer at a time (a lock in the cache directory).
fn ensure_mkfs_erofs() -> Result<(), ImageError> {
    let present = |name: &str| {
        Command::new(name)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if present(MKFS_EROFS) {
        return Ok(());
    }
    eprintln!("[fsimage] {MKFS_EROFS} is missing: installing erofs-utils from Debian");
    let cache = crate::cache_dir();
    std::fs::create_dir_all(&cache)
        .map_err(ImageError::io(format!("creating {}", cache.display())))?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    let script = format!(
        "{sudo}apt-get install -y -q erofs-utils >&2 || \
         ({sudo}apt-get update -q >&2 && {sudo}apt-get install -y -q erofs-utils >&2)",
        sudo = if root { "" } else { "sudo " }
    );
    let status = Command::new("flock")
        .arg(cache.join(".apt.lock"))
        .args(["sh", "-c", &script])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .map_err(ImageError::io("running apt-get install erofs-utils"))?;
    if !status.success() || !present(MKFS_EROFS) {
        return Err(ImageError::Io {
            context: format!("installing erofs-utils ({status})"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{MKFS_EROFS} is still missing: apt-get install erofs-utils"),
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("silo-fsimage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Writes the same tree in a different order with different mtimes.
    fn write_tree(root: &Path, reversed: bool) {
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            ("lib/python/a.py", b"print('a')\n".to_vec()),
            (
                "lib/python/big.bin",
                (0..300_000u32).map(|i| i as u8).collect(),
            ),
            ("bin/tool", b"#!/bin/sh\necho tool\n".to_vec()),
            ("README", b"runtime\n".to_vec()),
        ];
        if reversed {
            files.reverse();
        }
        for (p, data) in files {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, data).unwrap();
            let mode = if p.starts_with("bin/") { 0o755 } else { 0o644 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        for d in ["lib", "lib/python", "bin"] {
            std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
    }

    #[test]
    fn equal_trees_give_equal_bytes_and_a_change_shows() {
        let d = tempdir("repro");
        let (a, b) = (d.join("a"), d.join("b"));
        write_tree(&a, false);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write_tree(&b, true);
        build_fs_image(&a, &d.join("a.img")).unwrap();
        build_fs_image(&b, &d.join("b.img")).unwrap();
        let ia = std::fs::read(d.join("a.img")).unwrap();
        assert_eq!(
            &ia[1024..1028],
            &0xE0F5_E1E2u32.to_le_bytes(),
            "EROFS magic"
        );
        assert!(
            ia == std::fs::read(d.join("b.img")).unwrap(),
            "images differ"
        );
        // Rebuilding over an existing image replaces it.
        std::fs::write(b.join("README"), b"changed\n").unwrap();
        build_fs_image(&b, &d.join("b.img")).unwrap();
        assert!(
            ia != std::fs::read(d.join("b.img")).unwrap(),
            "a change did not show"
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_missing_tree_is_named() {
        let d = tempdir("missing");
        let e = build_fs_image(&d.join("nope"), &d.join("x.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        std::fs::write(d.join("file"), b"x").unwrap();
        let e = build_fs_image(&d.join("file"), &d.join("x.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(!d.join("x.img").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
