//! The test host's initramfs: busybox, the KVM (and network) kernel
//! modules, the caller's files with the shared libraries they need, the
//! command and `/init`.

use std::path::{Path, PathBuf};
use std::process::Command;

use silo_initramfs::newc::NewcWriter;

use super::{Source, TestHost, TestHostError};
use crate::ImageError;

impl TestHost {
    pub(super) fn initramfs(&self, image: &Path, command: &str) -> Result<Vec<u8>, ImageError> {
        let io = |what: String| {
            move |e| ImageError::Io {
                context: what,
                source: e,
            }
        };
        let mut w = NewcWriter::new(Vec::with_capacity(64 << 20));
        for d in [
            "/dev",
            "/proc",
            "/sys",
            "/tmp",
            "/run",
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/work",
        ] {
            w.dir(d, 0o755).map_err(io(format!("adding {d}")))?;
        }
        w.char_device("/dev/console", 0o600, 5, 1)
            .map_err(io("adding /dev/console".into()))?;
        let busybox = std::fs::read(crate::guest::BUSYBOX).map_err(ImageError::io(
            "reading /bin/busybox (apt-get install busybox-static)",
        ))?;
        w.file("/bin/busybox", 0o755, &busybox)
            .map_err(io("adding busybox".into()))?;
        let mut modules = vec!["irqbypass".to_string(), "kvm".into(), "kvm-amd".into()];
        if !self.port_forwards.is_empty() {
            let order = image.join("modules").join("net.order");
            let text = std::fs::read_to_string(&order)
                .map_err(ImageError::io(format!("reading {}", order.display())))?;
            modules.extend(text.split_whitespace().map(str::to_string));
            w.file("/modules/net.order", 0o644, text.as_bytes())
                .map_err(io("adding net.order".into()))?;
        }
        if self.netfilter {
            let order = image.join("modules").join("nft.order");
            let mut text = std::fs::read_to_string(&order)
                .map_err(ImageError::io(format!("reading {}", order.display())))?;
            if self.port_forwards.is_empty() {
                // The taps' /dev/net/tun (net.order loads it otherwise).
                text.insert_str(0, "tun\n");
            }
            modules.extend(text.split_whitespace().map(str::to_string));
            w.file("/modules/nft.order", 0o644, text.as_bytes())
                .map_err(io("adding nft.order".into()))?;
        }
        for m in &modules {
            let p = image.join("modules").join(format!("{m}.ko"));
            let data =
                std::fs::read(&p).map_err(ImageError::io(format!("reading {}", p.display())))?;
            w.file(&format!("/modules/{m}.ko"), 0o644, &data)
                .map_err(io(format!("adding module {m}")))?;
        }
        for (guest, src, mode) in &self.files {
            let data = match src {
                Source::Host(p) => {
                    std::fs::read(p).map_err(ImageError::io(format!("reading {}", p.display())))?
                }
                Source::Bytes(b) => b.clone(),
            };
            w.file(guest, *mode, &data)
                .map_err(io(format!("adding {guest}")))?;
        }
        w.file("/command.sh", 0o755, command.as_bytes())
            .map_err(io("adding the command".into()))?;
        w.file("/init", 0o755, INIT.as_bytes())
            .map_err(io("adding /init".into()))?;
        w.finish()
            .map_err(io("finishing the test host initramfs".into()))
    }
}

/// Shared libraries (and the loader) a dynamic binary needs, from `ldd`.
pub(super) fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, TestHostError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| TestHostError::Ldd {
            path: bin.to_path_buf(),
            reason: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries make ldd fail with "not a dynamic executable".
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The test host's `/init` (busybox `sh`).
const INIT: &str = include_str!("../../testhost/init.sh");
