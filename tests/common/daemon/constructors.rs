//! The ways a [`TestDaemon`] with VMs is made: runtimes, files, options
//! and port forwards.

use super::*;

impl TestDaemon {
    /// `silo serve` where VMs boot: here with hardware KVM, else in the
    /// KVM test host with its API port forwarded here.
    pub fn with_vms(config_toml: &str) -> Self {
        Self::with_vms_files(config_toml, Vec::new())
    }

    /// [`TestDaemon::with_vms`] for functions on the `python3.11` runtime:
    /// [`TestDaemon::with_runtime`].
    pub fn with_python(config_toml: &str, delivery: &str) -> Self {
        Self::with_runtime("python3.11", config_toml, delivery)
    }

    /// [`TestDaemon::with_vms`] for functions on managed runtime `runtime`
    /// (`python3.11`, `nodejs22.x`): the runtime is built here (cached) and,
    /// for the test host, what `delivery` (`"initramfs"` or `"pmem"`) needs
    /// of it is copied into it and named in the configuration's
    /// `[runtimes]`.
    pub fn with_runtime(runtime: &str, config_toml: &str, delivery: &str) -> Self {
        Self::with_runtime_and(runtime, config_toml, delivery, Vec::new())
    }

    /// [`TestDaemon::with_runtime`] with `files` (host path, path in the
    /// test host) copied into the test host too.
    pub fn with_runtime_and(
        runtime: &str,
        config_toml: &str,
        delivery: &str,
        files: Vec<(PathBuf, String)>,
    ) -> Self {
        Self::with_runtime_opts(runtime, config_toml, delivery, files, false)
    }

    /// [`TestDaemon::with_runtime_and`]; `netfilter`: the test host can run
    /// the daemon's `[network]` ([`TestHost::with_netfilter`]: `nft`, `ip`,
    /// veth and the nftables modules).
    pub fn with_runtime_opts(
        runtime: &str,
        config_toml: &str,
        delivery: &str,
        files: Vec<(PathBuf, String)>,
        netfilter: bool,
    ) -> Self {
        Self::with_runtime_forwarding(runtime, config_toml, delivery, files, netfilter, &[])
    }

    /// [`TestDaemon::with_runtime_opts`]; in the test host, each `(host
    /// port, test-host port)` of `forwards` is forwarded too (a second
    /// listener of the daemon, say); with hardware KVM they are unused.
    pub fn with_runtime_forwarding(
        runtime: &str,
        config_toml: &str,
        delivery: &str,
        mut files: Vec<(PathBuf, String)>,
        netfilter: bool,
        forwards: &[(u16, u16)],
    ) -> Self {
        let rt = silo_images::runtime::runtime_image(runtime)
            .unwrap_or_else(|e| panic!("{runtime} runtime: {e}"));
        let head = format!("runtime_delivery = \"{delivery}\"\n");
        if hardware_kvm_usable() {
            let cfg = format!(
                "{head}{config_toml}\n[runtimes]\n\"{runtime}\" = \"{}\"\n",
                rt.dir.display()
            );
            return Self::with_vms_forwarding(&cfg, Vec::new(), netfilter, forwards);
        }
        let cfg = format!("{head}{config_toml}\n[runtimes]\n\"{runtime}\" = \"/work/{runtime}\"\n");
        let file = match (delivery, rt.shared_image()) {
            ("pmem", Some(img)) => (img, "rt.img"),
            _ => (rt.cpio(), "rt.cpio"),
        };
        // With its manifest: the daemon checks the file against it.
        files.push((file.0, format!("/work/{runtime}/{}", file.1)));
        files.push((
            rt.manifest(),
            format!("/work/{runtime}/{}", silo_images::manifest::MANIFEST),
        ));
        Self::with_vms_forwarding(&cfg, files, netfilter, forwards)
    }

    /// [`TestDaemon::with_vms`] with `files` (host path, path in the test
    /// host) copied into the test host.
    pub fn with_vms_files(config_toml: &str, files: Vec<(PathBuf, String)>) -> Self {
        Self::with_vms_opts(config_toml, files, false)
    }

    /// [`TestDaemon::with_vms_files`]; `netfilter` as in
    /// [`TestDaemon::with_runtime_opts`]. In the test host, the script
    /// `/work/after_stop.sh`, if the test includes one, runs once the
    /// daemon has ended, its output in what [`TestDaemon::stop`] returns;
    /// `/work/daemon.env`, if included, is sourced before the daemon starts
    /// (exported variables: its environment).
    pub fn with_vms_opts(
        config_toml: &str,
        files: Vec<(PathBuf, String)>,
        netfilter: bool,
    ) -> Self {
        Self::with_vms_forwarding(config_toml, files, netfilter, &[])
    }

    /// [`TestDaemon::with_vms_opts`] with `forwards` as in
    /// [`TestDaemon::with_runtime_forwarding`].
    pub fn with_vms_forwarding(
        config_toml: &str,
        files: Vec<(PathBuf, String)>,
        netfilter: bool,
        forwards: &[(u16, u16)],
    ) -> Self {
        if hardware_kvm_usable() {
            let data = scratch("daemon-data");
            return Self::on_host(config_toml, &data, &[]);
        }
        eprintln!("no hardware KVM here: the daemon runs in the KVM test host");
        let spec = TestHostSpec {
            config_toml: config_toml.to_string(),
            files,
            netfilter,
            forwards: forwards.to_vec(),
        };
        let mut attempt = 0;
        loop {
            match Self::in_test_host(spec.clone()) {
                Ok(d) => return d,
                Err(ended) if ended.stalled && attempt < stall_retries() => {
                    attempt += 1;
                    eprintln!(
                        "[testhost] EMULATOR STALL while the daemon started (attempt {attempt} of \
                         {}): starting it again in a fresh test host",
                        stall_retries() + 1
                    );
                }
                Err(ended) => panic!(
                    "the daemon in the test host did not come up:\n{}",
                    ended.logs
                ),
            }
        }
    }
}
