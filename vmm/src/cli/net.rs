//! The `--net-*` flags of `silo-vmm`: the virtio-net device's tap, MAC
//! and rate limits.

use std::ffi::OsString;

use super::{number, text, CliError};

/// Parses `--net-rx-rate`/`--net-tx-rate`: `BYTES_PER_S[,BURST_BYTES]`,
/// both positive integers.
pub fn parse_rate(s: &str) -> Result<crate::bandwidth::BucketConfig, String> {
    let (rate, burst) = match s.split_once(',') {
        Some((r, b)) => (r, Some(b)),
        None => (s, None),
    };
    let positive = |v: &str, what: &str| match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{what} `{v}` is not a positive integer")),
    };
    let rate = positive(rate, "rate")?;
    let burst = burst
        .map(|b| positive(b, "burst"))
        .transpose()?
        .unwrap_or(0);
    Ok(crate::bandwidth::BucketConfig::per_second(rate, burst))
}

/// The `--net-*` flags as a device configuration (`None` without
/// `--net-tap`; the other net flags need it).
pub(super) fn parse_net(
    get: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<crate::device_manager::NetConfig>, CliError> {
    use crate::devices::virtio::net::{parse_mac, tap, NetLimits};
    let invalid = |flag: &'static str, value: &str, reason: String| CliError::Invalid {
        flag,
        value: value.to_string(),
        reason,
    };
    let Some(name) = get("--net-tap") else {
        for flag in ["--net-mac", "--net-rx-rate", "--net-tx-rate", "--net-pps"] {
            if get(flag).is_some() {
                return Err(CliError::Required("--net-tap <NAME>"));
            }
        }
        return Ok(None);
    };
    let name = text("--net-tap", &name)?.to_string();
    tap::check_name(&name).map_err(|e| invalid("--net-tap", &name, e.to_string()))?;
    let mac = match get("--net-mac") {
        None => None,
        Some(v) => {
            let s = text("--net-mac", &v)?;
            Some(parse_mac(s).map_err(|r| invalid("--net-mac", s, r))?)
        }
    };
    let rate = |flag: &'static str| -> Result<_, CliError> {
        match get(flag) {
            None => Ok(None),
            Some(v) => {
                let s = text(flag, &v)?;
                parse_rate(s).map(Some).map_err(|r| invalid(flag, s, r))
            }
        }
    };
    let packets = match get("--net-pps") {
        None => None,
        Some(v) => match number::<u64>("--net-pps", &v)? {
            0 => return Err(invalid("--net-pps", "0", "must be positive".into())),
            n => Some(crate::bandwidth::BucketConfig::per_second(n, 0)),
        },
    };
    Ok(Some(crate::device_manager::NetConfig {
        tap: name,
        mac,
        limits: NetLimits {
            rx_bytes: rate("--net-rx-rate")?,
            tx_bytes: rate("--net-tx-rate")?,
            packets,
        },
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::{parse, Command, VmmArgs, USAGE};
    use super::*;

    fn run(args: &[&str]) -> Result<VmmArgs, CliError> {
        match parse(args.iter().copied())? {
            Command::Run(a) => Ok(*a),
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn net_flags() {
        use crate::bandwidth::BucketConfig;
        use crate::devices::virtio::net::DEFAULT_MAC;
        assert!(run(&["--kernel", "/k"]).unwrap().net.is_none());
        let a = run(&[
            "--kernel",
            "/k",
            "--net-tap",
            "silo-tap0",
            "--net-rx-rate",
            "1000000,500000",
            "--net-tx-rate=2000",
            "--net-pps",
            "100",
        ])
        .unwrap();
        let n = a.net.unwrap();
        assert_eq!(n.tap, "silo-tap0");
        assert_eq!(n.mac, None);
        assert_eq!(
            n.limits.rx_bytes,
            Some(BucketConfig::per_second(1_000_000, 500_000))
        );
        assert_eq!(n.limits.tx_bytes, Some(BucketConfig::per_second(2000, 0)));
        assert_eq!(n.limits.packets, Some(BucketConfig::per_second(100, 0)));
        let a = run(&[
            "--kernel",
            "/k",
            "--net-tap",
            "t",
            "--net-mac",
            "06:00:a9:fe:00:02",
        ])
        .unwrap();
        assert_eq!(a.net.unwrap().mac, Some(DEFAULT_MAC));
        let e = |args: &[&str]| run(args).unwrap_err().to_string();
        assert!(e(&["--kernel", "/k", "--net-pps", "5"]).contains("--net-tap"));
        assert!(e(&["--kernel", "/k", "--net-tap", "a/b"]).contains("'--net-tap'"));
        assert!(e(&[
            "--kernel",
            "/k",
            "--net-tap",
            "t",
            "--net-mac",
            "01:00:00:00:00:00"
        ])
        .contains("multicast"));
        assert!(
            e(&["--kernel", "/k", "--net-tap", "t", "--net-rx-rate", "0"]).contains("positive")
        );
        assert!(e(&["--kernel", "/k", "--net-tap", "t", "--net-tx-rate", "5,x"]).contains("burst"));
        assert!(e(&["--kernel", "/k", "--net-tap", "t", "--net-pps", "0"]).contains("'--net-pps'"));
        let a = run(&[
            "--kernel",
            "/k",
            "--net-tap",
            "t",
            "--jail-root",
            "/r",
            "--jail-uid",
            "5",
            "--jail-gid",
            "5",
            "--jail-netns",
            "/run/netns/vm-1",
        ])
        .unwrap();
        let j = a.jail.unwrap();
        assert_eq!(j.netns, Some(PathBuf::from("/run/netns/vm-1")));
        assert_eq!(j.tap.as_deref(), Some("t"));
        assert!(e(&["--kernel", "/k", "--jail-netns", "/n"]).contains("--jail-root"));
        assert!(USAGE.contains("--net-rx-rate <BYTES_PER_S[,BURST_BYTES]>"));
    }
}
