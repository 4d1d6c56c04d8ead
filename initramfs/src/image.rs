//! The guest initramfs for one function version: the agent as `/init`, its
//! settings, and the function package under the task root.

use std::path::Path;

use silo_proto::AgentConfig;

use crate::newc::NewcWriter;
use crate::package::{unpack, unpack_code, Entry, PackageError};

/// Errors building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The function package is bad.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The agent binary could not be read.
    #[error("cannot read the guest agent {path}: {source}")]
    Agent {
        /// Its path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Writing the archive failed.
    #[error("cannot write the initramfs: {0}")]
    Write(#[from] std::io::Error),
}

/// Builds the initramfs for `package` (a function zip) run by `agent`.
pub fn build(agent: &Path, config: &AgentConfig, package: &[u8]) -> Result<Vec<u8>, ImageError> {
    build_from(agent, config, package, unpack(package)?)
}

/// [`build`] for a function on a managed runtime: its package needs no
/// `bootstrap` (the runtime's tree is added beside this image).
pub fn build_managed(
    agent: &Path,
    config: &AgentConfig,
    package: &[u8],
) -> Result<Vec<u8>, ImageError> {
    build_from(agent, config, package, unpack_code(package)?)
}

fn build_from(
    agent: &Path,
    config: &AgentConfig,
    package: &[u8],
    entries: Vec<Entry>,
) -> Result<Vec<u8>, ImageError> {
    let agent_bin = std::fs::read(agent).map_err(|source| ImageError::Agent {
        path: agent.display().to_string(),
        source,
    })?;
    let mut w = NewcWriter::new(Vec::with_capacity(agent_bin.len() + package.len() * 3));
    for d in [
        "/dev", "/proc", "/sys", "/tmp", "/opt", "/etc", "/silo", "/root",
    ] {
        w.dir(d, 0o755)?;
    }
    w.dir("/tmp", 0o1777)?;
    w.char_device("/dev/console", 0o600, 5, 1)?;
    w.char_device("/dev/null", 0o666, 1, 3)?;
    w.file("/etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nsbx_user1051:x:993:990::/home/sbx_user1051:/sbin/nologin\n")?;
    w.file("/etc/group", 0o644, b"root:x:0:\n")?;
    w.file("/etc/hosts", 0o644, b"127.0.0.1 localhost\n")?;
    w.file("/init", 0o755, &agent_bin)?;
    let json = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    w.file("/silo/agent.json", 0o644, &json)?;
    let root = config.task_root.trim_end_matches('/');
    w.dir(root, 0o755)?;
    for e in entries {
        match e {
            Entry::Dir(p) => w.dir(&format!("{root}/{p}"), 0o755)?,
            Entry::File(p, mode, data) => w.file(&format!("{root}/{p}"), mode, &data)?,
            Entry::Symlink(p, target) => w.symlink(&format!("{root}/{p}"), &target)?,
        }
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::make_zip;

    #[test]
    fn image_holds_agent_settings_and_function() {
        let dir = std::env::temp_dir().join(format!("silo-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let agent = dir.join("agent");
        std::fs::write(&agent, b"\x7fELF-agent").unwrap();
        let zip = make_zip(&[("bootstrap", 0o755, b"run"), ("lib/x.so", 0o644, b"so")]);
        let img = build(&agent, &AgentConfig::default(), &zip).unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("GNU cpio (apt-get install cpio)");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&img).unwrap();
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        for needle in [
            "init",
            "silo/agent.json",
            "var/task/bootstrap",
            "var/task/lib/x.so",
            "dev/console",
        ] {
            assert!(out.contains(needle), "missing {needle}:\n{out}");
        }
        assert!(
            out.lines()
                .any(|l| l.contains("var/task/bootstrap") && l.starts_with("-rwxr-xr-x")),
            "{out}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_package_fails_before_reading_anything_else() {
        let e = build(
            Path::new("/nonexistent-agent"),
            &AgentConfig::default(),
            b"junk",
        )
        .unwrap_err();
        assert!(matches!(e, ImageError::Package(_)), "{e}");
    }
}
