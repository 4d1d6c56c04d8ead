//! Small guest initramfs images for tests and benchmarks: busybox plus an
//! `/init` script.

use silo_initramfs::newc::NewcWriter;

use crate::ImageError;

/// Host path of the static busybox (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

/// A newc initramfs with a static busybox at `/bin/busybox` and `init_script`
/// (a busybox `sh` script; the `#!` line is added) as `/init`.
pub fn busybox_initramfs(init_script: &str) -> Result<Vec<u8>, ImageError> {
    let busybox = std::fs::read(BUSYBOX).map_err(ImageError::io(format!(
        "reading {BUSYBOX} (apt-get install busybox-static)"
    )))?;
    let mut w = NewcWriter::new(Vec::new());
    let io = |e| ImageError::Io {
        context: "writing the guest initramfs".into(),
        source: e,
    };
    for d in [
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/bin",
        "/sbin",
        "/usr/bin",
        "/usr/sbin",
    ] {
        w.dir(d, 0o755).map_err(io)?;
    }
    w.char_device("/dev/console", 0o600, 5, 1).map_err(io)?;
    w.file("/bin/busybox", 0o755, &busybox).map_err(io)?;
    w.file(
        "/init",
        0o755,
        format!("#!/bin/busybox sh\n{init_script}\n").as_bytes(),
    )
    .map_err(io)?;
    w.finish().map_err(io)
}
