//! The guest's resolver configuration: the daemon passes the nameservers on
//! the kernel command line as `silo.dns=IP[,IP...]` (the kernel itself
//! configures eth0 from `ip=`), and the agent writes `/etc/resolv.conf`
//! from it before the runtime starts, so `getaddrinfo` in any language
//! works unchanged. Nothing is written without the parameter (a function
//! without network has no interface and no resolvers).

use std::net::IpAddr;
use std::path::Path;

/// The kernel command line parameter naming the nameservers.
pub const PARAM: &str = "silo.dns=";
/// At most this many nameservers: the number glibc and musl read
/// (`MAXNS`); more are ignored.
pub const MAX_SERVERS: usize = 3;

/// Why the resolver configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A `silo.dns` entry is not an IP address.
    #[error("silo.dns: {0:?} is not an IP address")]
    BadAddress(String),
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The nameservers `silo.dns=` names on `cmdline` (the last occurrence
/// wins, as for kernel parameters); `None` without the parameter.
pub fn servers(cmdline: &str) -> Result<Option<Vec<IpAddr>>, DnsError> {
    let Some(value) = cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|w| w.strip_prefix(PARAM))
    else {
        return Ok(None);
    };
    value
        .split(',')
        .filter(|s| !s.is_empty())
        .take(MAX_SERVERS)
        .map(|s| {
            s.parse::<IpAddr>().map_err(|_| {
                // Bounded and escaped: the text comes from the command line.
                let shown: String = s.chars().take(64).collect();
                DnsError::BadAddress(shown.escape_debug().to_string())
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The text of `resolv.conf` for `servers`.
pub fn resolv_conf(servers: &[IpAddr]) -> String {
    servers
        .iter()
        .map(|s| format!("nameserver {s}\n"))
        .collect()
}

/// Reads the command line at `cmdline` (`/proc/cmdline` in a guest) and,
/// if it has `silo.dns=`, writes `resolv` (`/etc/resolv.conf`), creating
/// its directory. Returns the servers written.
pub fn configure(cmdline: &Path, resolv: &Path) -> Result<Vec<IpAddr>, DnsError> {
    let write_err = |source| DnsError::Write {
        path: resolv.display().to_string(),
        source,
    };
    let line = std::fs::read_to_string(cmdline).unwrap_or_default();
    let Some(servers) = servers(&line)? else {
        return Ok(Vec::new());
    };
    if let Some(dir) = resolv.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    std::fs::write(resolv, resolv_conf(&servers)).map_err(write_err)?;
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_from_the_command_line() {
        let line = "console=ttyS0 ip=169.254.0.2::169.254.0.1:255.255.255.252::eth0:off silo.dns=1.1.1.1,9.9.9.9 quiet";
        let s = servers(line).unwrap().unwrap();
        assert_eq!(
            s,
            vec![
                "1.1.1.1".parse::<IpAddr>().unwrap(),
                "9.9.9.9".parse().unwrap()
            ]
        );
        assert_eq!(resolv_conf(&s), "nameserver 1.1.1.1\nnameserver 9.9.9.9\n");
        assert_eq!(servers("console=ttyS0 quiet").unwrap(), None);
        // The last occurrence wins; at most three servers.
        let s = servers("silo.dns=1.1.1.1 silo.dns=10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4")
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], "10.0.0.1".parse::<IpAddr>().unwrap());
        assert!(matches!(
            servers("silo.dns=1.1.1.1,evil\ntext"),
            Err(DnsError::BadAddress(_))
        ));
        let long = format!("silo.dns={}", "x".repeat(10_000));
        let e = servers(&long).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn configure_writes_resolv_conf_only_when_asked() {
        let dir = std::env::temp_dir().join(format!("silo-dns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cmdline = dir.join("cmdline");
        let resolv = dir.join("etc/resolv.conf");
        std::fs::write(&cmdline, "console=ttyS0\n").unwrap();
        assert!(configure(&cmdline, &resolv).unwrap().is_empty());
        assert!(!resolv.exists());
        std::fs::write(&cmdline, "console=ttyS0 silo.dns=192.0.2.53\n").unwrap();
        configure(&cmdline, &resolv).unwrap();
        assert_eq!(
            std::fs::read_to_string(&resolv).unwrap(),
            "nameserver 192.0.2.53\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
