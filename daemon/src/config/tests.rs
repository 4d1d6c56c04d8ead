use super::*;

#[test]
fn empty_file_is_the_defaults_and_mistakes_are_named() {
    let cfg: DaemonConfig = toml::from_str("").unwrap();
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(cfg.limits.concurrency, 0, "sized from the host");
    let e = toml::from_str::<DaemonConfig>("listn = \"x\"").unwrap_err();
    assert!(e.to_string().contains("listn"), "{e}");
    let cfg: DaemonConfig = toml::from_str(
        "[[credentials]]\naccess_key_id = \"A\"\nsecret_access_key = \"s\"\ntenants = [\"bad|tenant\"]",
    )
    .unwrap();
    let e = cfg.check().unwrap_err().to_string();
    assert!(e.contains("bad|tenant"), "{e}");
    // Lambda's rule allows spaces.
    let cfg: DaemonConfig = toml::from_str(
        "[[credentials]]\naccess_key_id = \"A\"\nsecret_access_key = \"s\"\ntenants = [\"tenant A\", \"../x\"]",
    )
    .unwrap();
    assert_eq!(cfg.check(), Ok(()));
}

#[test]
fn metrics_listen_is_off_by_default_and_a_port_alone_is_loopback() {
    let cfg: DaemonConfig = toml::from_str("").unwrap();
    assert_eq!(cfg.metrics_listen, None);
    for text in ["metrics_listen = 9101", "metrics_listen = \"9101\""] {
        let cfg: DaemonConfig = toml::from_str(text).unwrap();
        assert_eq!(
            cfg.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9101"),
            "{text}"
        );
    }
    let cfg: DaemonConfig = toml::from_str("metrics_listen = \"0.0.0.0:9101\"").unwrap();
    assert_eq!(cfg.metrics_listen.unwrap().to_string(), "0.0.0.0:9101");
    let e = toml::from_str::<DaemonConfig>("metrics_listen = \"x:y\"").unwrap_err();
    assert!(e.to_string().contains("metrics_listen"), "{e}");
}

#[test]
fn images_can_be_named_in_the_configuration() {
    let cfg: DaemonConfig = toml::from_str("").unwrap();
    assert_eq!((cfg.kernel, cfg.agent), (None, None));
    let cfg: DaemonConfig =
        toml::from_str("kernel = \"/opt/silo/vmlinux\"\nagent = \"/opt/silo/agent\"").unwrap();
    assert_eq!(cfg.kernel.unwrap(), PathBuf::from("/opt/silo/vmlinux"));
    assert_eq!(cfg.agent.unwrap(), PathBuf::from("/opt/silo/agent"));
}

#[test]
fn connection_limits_must_be_usable() {
    for (toml, field) in [
        ("[limits]\nmax_header_bytes = 100", "max_header_bytes"),
        (
            "[limits]\nheader_read_timeout_s = 0",
            "header_read_timeout_s",
        ),
        ("[limits]\nmax_connections = 0", "max_connections"),
        ("[limits]\nevent_workers = 0", "event_workers"),
        ("[limits]\ncold_start_queue = 0", "cold_start_queue"),
        ("[limits]\ninit_timeout_s = 0", "init_timeout_s"),
        ("[limits]\ninit_timeout_s = 4000", "init_timeout_s"),
    ] {
        let cfg: DaemonConfig = toml::from_str(toml).unwrap();
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains(field), "{toml}: {e}");
    }
}

#[test]
fn the_run_dir_is_beside_the_store_and_never_overlaps_it() {
    let cfg: DaemonConfig = toml::from_str("data_dir = \"/var/lib/silo\"").unwrap();
    assert_eq!(cfg.run_dir(), PathBuf::from("/var/lib/silo-run"));
    assert_eq!(cfg.console_bytes, 64 * 1024);
    assert_eq!(cfg.check(), Ok(()));
    let cfg: DaemonConfig =
        toml::from_str("data_dir = \"/var/lib/silo\"\nrun_dir = \"/run/silo\"").unwrap();
    assert_eq!(cfg.run_dir(), PathBuf::from("/run/silo"));
    assert_eq!(cfg.check(), Ok(()));
    for run in [
        "/var/lib/silo",
        "/var/lib/silo/run",
        "/var/lib/silo/functions/../x",
        "/var/lib",
        "/var/lib/silo/",
    ] {
        let cfg: DaemonConfig = toml::from_str(&format!(
            "data_dir = \"/var/lib/silo\"\nrun_dir = \"{run}\""
        ))
        .unwrap();
        let e = cfg.check().unwrap_err().to_string();
        assert!(
            e.contains("run_dir") && e.contains("data_dir"),
            "{run}: {e}"
        );
    }
    // A relative data directory ("./data", as the tests use) gets "./data-run".
    let cfg: DaemonConfig = toml::from_str("data_dir = \"./data\"").unwrap();
    assert_eq!(cfg.run_dir(), PathBuf::from("./data-run"));
    assert_eq!(cfg.check(), Ok(()));
}

#[test]
fn log_write_delay_out_of_range_is_refused_by_name() {
    let cfg: DaemonConfig = toml::from_str("[logs]\nwrite_delay_ms = 1000").unwrap();
    assert_eq!(cfg.logs.write_delay_ms, 1000);
    for bad in ["0", "10001"] {
        let cfg: DaemonConfig = toml::from_str(&format!("[logs]\nwrite_delay_ms = {bad}")).unwrap();
        let e = cfg.check().unwrap_err().to_string();
        assert!(e.contains("write_delay_ms"), "{e}");
    }
}

#[test]
fn console_bytes_zero_is_off_and_huge_is_refused() {
    let cfg: DaemonConfig = toml::from_str("console_bytes = 0").unwrap();
    assert_eq!(cfg.check(), Ok(()));
    let cfg: DaemonConfig = toml::from_str("console_bytes = 1000000000").unwrap();
    let e = cfg.check().unwrap_err().to_string();
    assert!(e.contains("console_bytes"), "{e}");
}

#[test]
fn small_pages_is_off_unless_asked() {
    let cfg: DaemonConfig = toml::from_str("").unwrap();
    assert!(!cfg.small_pages);
    let cfg: DaemonConfig = toml::from_str("small_pages = true").unwrap();
    assert!(cfg.small_pages);
}
