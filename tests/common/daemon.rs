//! A `silo serve` under test, reached over real HTTP.
//!
//! [`TestDaemon::on_host`] runs the daemon as a child process of the test
//! (for everything that needs no VM). [`TestDaemon::with_vms`] runs it where
//! microVMs can boot: directly with hardware KVM, else inside the KVM test
//! host with its port forwarded to this host, so clients here (the Rust
//! client, boto3) talk to it the same way.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::WorkFile;
use silo_client::LambdaClient;
use silo_images::testhost::{
    hardware_kvm_usable, HostSlot, TestHost, TestHostError, TestHostOutput,
};

/// An admin key every test daemon knows.
pub const ADMIN: (&str, &str) = ("AKIDSILOADMIN", "admin-secret-for-tests");
/// A key restricted to tenant-A.
pub const TENANT_A: (&str, &str) = ("AKIDSILOTENANTA", "tenant-a-secret-for-tests");

/// The configuration every test daemon uses (plus what a test adds). VMs
/// get no CPU share (`jail.cpu_full_at_mib = 0`): the test host's emulated
/// CPU is tens of times slower than hardware, and a 128 MB function's 7%
/// of it would stretch every invoke past its timeout. `tests/jail_e2e.rs`
/// checks the default share is written.
pub fn config(extra: &str) -> String {
    format!(
        "[jail]\ncpu_full_at_mib = 0\n\n[[credentials]]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\n\
         [[credentials]]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\ntenants = [\"tenant-A\"]\n\n{extra}",
        ADMIN.0, ADMIN.1, TENANT_A.0, TENANT_A.1
    )
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A unique scratch directory.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "silo-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The guest kernel and agent (built once, cached).
pub fn images() -> (PathBuf, PathBuf) {
    let kernel = silo_images::kernel::guest_kernel()
        .expect("guest kernel")
        .vmlinux;
    let agent = silo_images::artifacts::guest_agent().expect("guest agent");
    (kernel, agent)
}

/// The counter function (`functions/counter`, built once and cached) as a
/// Lambda zip: its binary as `bootstrap`.
pub fn counter_zip() -> Vec<u8> {
    let counter = std::fs::read(silo_images::artifacts::counter_function().unwrap()).unwrap();
    silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &counter)])
}

/// Creates `counter`, the per-tenant function of [`counter_zip`] with a
/// 30 s timeout, through `admin`; returns the zip.
pub fn create_counter(admin: &LambdaClient) -> Vec<u8> {
    let zip = counter_zip();
    let r = admin
        .create_function("counter", &zip, true, serde_json::json!({"Timeout": 30}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    zip
}

/// Bytes of the daemon's log that [`script_diagnostics`]' `silo_diag`
/// prints (its end).
pub const DIAG_LOG_BYTES: u32 = 20 * 1024;

/// Shell functions for a script that runs `silo serve` (pid in `$daemon`,
/// log in `daemon.log`, unauthenticated `/metrics` on 127.0.0.1:
/// `metrics_port`), so that a failure or a hang shows what the daemon was
/// doing rather than only that it stopped answering:
///
/// - `silo_diag`: prints, between `DIAG_BEGIN` and `DIAG_END` on the
///   script's own output (fd 9, whatever the caller redirected), the last
///   [`DIAG_LOG_BYTES`] of the daemon's log, its `/metrics` (within 10 s:
///   a daemon that cannot answer that is stuck as a whole), the process
///   list, memory, the kernel log's end, and each daemon thread's name,
///   state, wait channel and kernel stack;
/// - `silo_heartbeat SECONDS`: prints a `HEARTBEAT` line (uptime, load)
///   every so many seconds in the background (pid in `$heartbeat`): when a
///   run hangs, heartbeats that go on mean the test host runs and something
///   in it waits; heartbeats that stop mean the test host itself stalled
///   (its timers, which `within` needs too);
/// - `within SECONDS COMMAND...`: runs the command under busybox
///   `timeout`; if it had to be killed, prints `TIMED_OUT` and runs
///   `silo_diag` (and sets `diagnosed=1`). Its exit status is the
///   command's.
pub fn script_diagnostics(metrics_port: u16) -> String {
    format!(
        r#"exec 9>&1
diagnosed=0
silo_diag() {{
  echo DIAG_BEGIN >&9
  {{
    echo "--- daemon log, last {DIAG_LOG_BYTES} bytes of $(wc -c < daemon.log)"
    tail -c {DIAG_LOG_BYTES} daemon.log
    echo "--- /metrics"
    timeout 10 wget -qO- http://127.0.0.1:{metrics_port}/metrics | grep -v '^#' || echo "(no /metrics answer within 10 s)"
    echo "--- processes"
    ps -o pid,ppid,stat,time,args 2>/dev/null || ps
    echo "--- memory"
    grep -E '^(MemTotal|MemFree|MemAvailable|Shmem):' /proc/meminfo
    echo "--- kernel log, last 30 lines"
    dmesg | tail -n 30
    echo "--- daemon threads (name state wchan, kernel stack)"
    for t in /proc/$daemon/task/*; do
      echo "$(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan 2>/dev/null)"
      head -n 6 $t/stack 2>/dev/null | sed 's/^/    /'
    done
  }} >&9 2>&1
  echo DIAG_END >&9
}}
silo_heartbeat() {{
  ( while sleep "$1"; do echo "HEARTBEAT $(cut -d' ' -f1 /proc/uptime) s up, load $(cut -d' ' -f1-3 /proc/loadavg)" >&9; done ) &
  heartbeat=$!
}}
within() {{
  w_s=$1; shift
  timeout "$w_s" "$@"; w_rc=$?
  if [ $w_rc -eq 124 ] || [ $w_rc -eq 143 ] || [ $w_rc -eq 137 ]; then
    echo "TIMED_OUT after $w_s s (exit $w_rc): $*" >&9
    silo_diag; diagnosed=1
  fi
  return $w_rc
}}
"#
    )
}

/// Shell lines for a [`super::run_with_kvm`] script (its work directory
/// holding [`script_files`]) that start `silo serve` on 127.0.0.1:`port`
/// (unauthenticated `/metrics` on `port + 1`) with `SILO_LOG=<silo_log>` if
/// given, its stderr in `daemon.log` and its pid in `$daemon`; export the
/// admin key and `SILO_ENDPOINT` for the `silo` CLI; define
/// [`script_diagnostics`]' `silo_diag` and `within`; and wait until the
/// daemon answers (else print `NO_DAEMON` and the diagnostics, and exit 1).
pub fn script_start_daemon(port: u16, silo_log: Option<&str>) -> String {
    let (key, secret) = ADMIN;
    let log = silo_log
        .map(|l| format!("SILO_LOG={l} "))
        .unwrap_or_default();
    let metrics = port + 1;
    let diag = script_diagnostics(metrics);
    format!(
        r#"export AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} SILO_ENDPOINT=http://127.0.0.1:{port}
{diag}{log}silo serve --config silo.toml --listen 127.0.0.1:{port} --metrics-listen 127.0.0.1:{metrics} --data-dir ./data --kernel vmlinux --agent agent 2> daemon.log &
daemon=$!
i=0; until silo invoke --name none --payload '{{}}' 2>&1 | grep -q ResourceNotFound; do i=$((i+1)); [ $i -gt 300 ] && echo NO_DAEMON && silo_diag && exit 1; sleep 0.2; done
"#
    )
}

/// A shell line that creates the per-tenant function `name` with `silo
/// create-function` from `code` (`--bootstrap <file>` or `--zip <file>`)
/// and a timeout of `timeout_s` seconds, its answer in the file `out`; on
/// failure (or no answer within 300 s) it prints that answer and
/// `silo_diag`'s diagnostics, and exits 1.
pub fn script_create_function(name: &str, code: &str, timeout_s: u32, out: &str) -> String {
    format!(
        "within 300 silo create-function --name {name} {code} --per-tenant --timeout {timeout_s} > {out} \
         || {{ cat {out}; [ $diagnosed = 1 ] || silo_diag; exit 1; }}\n"
    )
}

/// The work files of a script that starts a daemon with
/// [`script_start_daemon`]: the guest kernel (`vmlinux`), the agent
/// (`agent`), the counter function's bootstrap (`counter`) and `config` as
/// `silo.toml`.
pub fn script_files(config: String) -> Vec<(&'static str, WorkFile)> {
    let (kernel, agent) = images();
    let counter = silo_images::artifacts::counter_function().unwrap();
    vec![
        ("vmlinux", WorkFile::Host(kernel)),
        ("agent", WorkFile::Host(agent)),
        ("counter", WorkFile::Host(counter)),
        ("silo.toml", WorkFile::Bytes(config.into_bytes())),
    ]
}

enum Where {
    Host(Child),
    TestHost {
        run: JoinHandle<Result<TestHostOutput, TestHostError>>,
        stop_port: u16,
    },
}

/// Makes sure this machine's `python3` can import boto3 (and jmespath, which
/// boto3 installs and the scripts use): installed by `.ci/run`; on a fresh
/// machine this installs it from PyPI with pip, so the README's test
/// command needs no other set-up. Panics if it still cannot.
pub fn ensure_boto3() {
    let has = || {
        Command::new("python3")
            .args(["-c", "import boto3, jmespath"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
        eprintln!("installing boto3 from PyPI");
        let _ = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "boto3",
            ])
            .status();
    }
    assert!(
        has(),
        "boto3 is not installed and `python3 -m pip install boto3` failed"
    );
}

/// What a client script run by [`TestDaemon::run_python_client`] printed,
/// and the daemon's log.
pub struct ClientRun {
    /// Whether the script exited 0.
    pub success: bool,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// The daemon's log (and the test host's output), read once it stopped.
    pub daemon_log: String,
}

/// How a daemon in the test host was made: enough to make it again in a
/// fresh test host when the emulator stalled under it.
#[derive(Clone)]
struct TestHostSpec {
    config_toml: String,
    files: Vec<(PathBuf, String)>,
    netfilter: bool,
    forwards: Vec<(u16, u16)>,
}

/// How many times a test-host daemon's run that ended in an emulator stall
/// is run again from scratch (QEMU 7.2's TCG stall, see `images/README.md`):
/// `SILO_TESTHOST_STALL_RETRIES` (default 1), the budget of
/// [`TestHost::run`]'s own retry, which a daemon's test host cannot use (its
/// clients here would be left talking to nobody).
fn stall_retries() -> u32 {
    std::env::var(silo_images::testhost::STALL_RETRIES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The interval of a daemon test host's console heartbeat; four missed ones
/// end its run as a stall.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// A running daemon.
pub struct TestDaemon {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Where its data lives (host mode only).
    pub data_dir: PathBuf,
    log: PathBuf,
    place: Option<Where>,
    /// Host mode: the configuration and extra arguments, for a restart.
    host_args: Option<(String, Vec<String>)>,
    /// Test-host mode: how to make this daemon again after a stall.
    spec: Option<TestHostSpec>,
}

/// Why a daemon's test host ended: the log it left, and whether the run
/// ended in an emulator stall (so what the test saw proves nothing).
struct Ended {
    logs: String,
    stalled: bool,
}

fn wait_ready(endpoint: &str, deadline: Duration, alive: impl Fn() -> bool) -> bool {
    let c = LambdaClient::new(endpoint, None);
    let until = Instant::now() + deadline;
    while Instant::now() < until && alive() {
        // Any answer of the API means it is up: 200 without keys, 403 when
        // /metrics needs an admin key.
        if let Ok(r) = c.request("GET", "/metrics", &[], b"") {
            if r.status == 200 || r.status == 403 {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

impl TestDaemon {
    /// `silo serve` as a child of this test, with `config` and `data_dir`.
    pub fn on_host(config_toml: &str, data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::on_host_with_env::<&str>(config_toml, data_dir, extra_args, &[])
    }

    /// [`TestDaemon::on_host`] with `env` added to the daemon's environment
    /// (`TOKIO_WORKER_THREADS`, say).
    pub fn on_host_with_env<V: AsRef<std::ffi::OsStr>>(
        config_toml: &str,
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, V)],
    ) -> Self {
        let (kernel, agent) = images();
        let dir = scratch("daemon");
        std::fs::write(dir.join("silo.toml"), config_toml).unwrap();
        let port = free_port();
        let log = dir.join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_silo"))
            .arg("serve")
            .arg("--config")
            .arg(dir.join("silo.toml"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--kernel")
            .arg(&kernel)
            .arg("--agent")
            .arg(&agent)
            .args(extra_args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn silo serve");
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut d = Self {
            endpoint,
            data_dir: data_dir.to_path_buf(),
            log,
            place: Some(Where::Host(child)),
            host_args: Some((
                config_toml.to_string(),
                extra_args.iter().map(|a| a.to_string()).collect(),
            )),
            spec: None,
        };
        let ok = wait_ready(&d.endpoint, Duration::from_secs(60), || true);
        if !ok {
            let logs = d.stop();
            panic!("the daemon did not come up:\n{logs}");
        }
        d
    }

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

    /// One test host running the daemon `spec` describes, once it answers;
    /// else how that test host ended.
    fn in_test_host(spec: TestHostSpec) -> Result<Self, Ended> {
        let (kernel, agent) = images();
        let (api_port, stop_port) = (free_port(), free_port());
        // A heartbeat on the console: the harness ends a run whose
        // heartbeats stop as an emulator stall ([`TestHost::heartbeat`]), the
        // stall that leaves the CPU spinning rather than halted.
        let script = "( while sleep 10; do echo TESTHOST_HEARTBEAT; done ) & echo $! > /tmp/heartbeat.pid\n\
             mkdir -p /srv/cgi-bin\n\
             printf '#!/bin/sh\\ntouch /tmp/stop\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nstopping\\\\n\"\\n' > /srv/cgi-bin/stop\n\
             chmod 755 /srv/cgi-bin/stop\n\
             for f in /work/cgi/*; do [ -f \"$f\" ] && cp \"$f\" /srv/cgi-bin/ && chmod 755 \"/srv/cgi-bin/${f##*/}\"; done\n\
             printf '#!/bin/sh\ntouch /tmp/restart\nwhile [ -f /tmp/restart ]; do sleep 0.1; done\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\nrestarted\\\\n\"\n' > /srv/cgi-bin/restart\n\
             chmod 755 /srv/cgi-bin/restart\n\
             httpd -p 8081 -h /srv\n\
             if [ -f /work/daemon.env ]; then . /work/daemon.env; fi\n\
             start() { SILO_LOG=info silo serve --config silo.toml --listen 0.0.0.0:9000 --data-dir /tmp/silo-data \
             --kernel vmlinux --agent agent >> /tmp/daemon.log 2>&1 & pid=$!; }\n\
             start\n\
             i=0; while [ ! -f /tmp/stop ] && [ $i -lt 9000 ] && kill -0 $pid 2>/dev/null; do \
             if [ -f /tmp/restart ]; then kill -TERM $pid; wait $pid; echo \"DAEMON_RESTART $?\"; start; rm -f /tmp/restart; fi; \
             sleep 0.1; i=$((i+1)); done\n\
             kill -TERM $pid 2>/dev/null; wait $pid; echo \"DAEMON_EXIT $?\"\n\
             echo DAEMON_LOG_BEGIN; cat /tmp/daemon.log; echo DAEMON_LOG_END\n\
             if [ -f /work/after_stop.sh ]; then echo AFTER_STOP_BEGIN; sh /work/after_stop.sh 2>&1; echo AFTER_STOP_END; fi\n"
            .to_string();
        // Wait for the machine's one test-host slot before any clock starts.
        let slot = HostSlot::acquire().expect("test host slot");
        let mut host = TestHost::new()
            .in_slot(slot)
            .timeout(Duration::from_secs(1000))
            .memory_mib(3072)
            .heartbeat(HEARTBEAT)
            .silo_binaries(env!("CARGO_BIN_EXE_silo"))
            .expect("include silo")
            .file(&kernel, "/work/vmlinux", 0o644)
            .file(&agent, "/work/agent", 0o755)
            .bytes(
                "/work/silo.toml",
                spec.config_toml.as_bytes().to_vec(),
                0o644,
            )
            .port_forward(api_port, 9000)
            .port_forward(stop_port, 8081);
        if spec.netfilter {
            host = host.with_netfilter().expect("nft and ip for the test host");
        }
        for (outside, inside) in &spec.forwards {
            host = host.port_forward(*outside, *inside);
        }
        for (from, to) in &spec.files {
            host = host.file(from, to, 0o644);
        }
        // One attempt only: a stall is retried here, daemon and scenario
        // together ([`TestDaemon::run_scenario`]).
        let run = std::thread::spawn(move || host.run_once(&script));
        let endpoint = format!("http://127.0.0.1:{api_port}");
        let ok = wait_ready(&endpoint, Duration::from_secs(300), || !run.is_finished());
        let mut d = Self {
            endpoint,
            data_dir: PathBuf::new(),
            log: PathBuf::new(),
            place: Some(Where::TestHost { run, stop_port }),
            host_args: None,
            spec: Some(spec),
        };
        if !ok {
            return Err(d.end());
        }
        Ok(d)
    }

    /// Runs `scenario` against this daemon, then stops the daemon and
    /// returns its log. If the scenario panicked, prints the daemon's (and
    /// test host's) output first and goes on panicking.
    ///
    /// In the test host, a run that ended in an emulator stall proves
    /// nothing either way (the scenario's clients lose their daemon
    /// mid-request): the daemon is made again in a fresh test host and the
    /// whole scenario runs again, at most [`stall_retries`] times. So a
    /// scenario must not depend on state an earlier attempt left outside
    /// the test host.
    pub fn run_scenario(mut self, mut scenario: impl FnMut(&mut TestDaemon)) -> String {
        let mut attempt = 0;
        loop {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&mut self)));
            let ended = self.end();
            if ended.stalled && attempt < stall_retries() {
                if let Some(spec) = self.spec.clone() {
                    attempt += 1;
                    eprintln!(
                        "[testhost] EMULATOR STALL under the daemon (attempt {attempt} of {}; \
                         the scenario {}): running the daemon and the scenario again in a fresh \
                         test host",
                        stall_retries() + 1,
                        if result.is_ok() { "passed" } else { "failed" }
                    );
                    self = Self::with_vms_forwarding(
                        &spec.config_toml,
                        spec.files,
                        spec.netfilter,
                        &spec.forwards,
                    );
                    continue;
                }
            }
            if let Err(e) = result {
                eprintln!("daemon and test host output:\n{}", ended.logs);
                std::panic::resume_unwind(e);
            }
            return ended.logs;
        }
    }

    /// Runs the Python client script `tests/python/<script>` as
    /// [`TestDaemon::run_python_client`] does, leaving the daemon running.
    pub fn python_client(&self, script: &str, env: &[(&str, &str)]) -> ClientRun {
        let out = Command::new("python3")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/python")
                    .join(script),
            )
            .env("SILO_ENDPOINT", &self.endpoint)
            .env("ADMIN_KEY", ADMIN.0)
            .env("ADMIN_SECRET", ADMIN.1)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap();
        ClientRun {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            daemon_log: String::new(),
        }
    }

    /// Runs the Python client script `tests/python/<script>` (boto3: see
    /// [`ensure_boto3`]) against this daemon, with `SILO_ENDPOINT`, the
    /// admin key (`ADMIN_KEY`, `ADMIN_SECRET`) and `env` in its environment
    /// and no `AWS_PROFILE`; then stops the daemon. An emulator stall under
    /// the daemon runs both again, as in [`TestDaemon::run_scenario`].
    pub fn run_python_client(self, script: &str, env: &[(&str, &str)]) -> ClientRun {
        let mut run = None;
        let logs = self.run_scenario(|d| run = Some(d.python_client(script, env)));
        let mut run = run.expect("the scenario ran");
        run.daemon_log = logs;
        run
    }

    /// An admin client.
    pub fn admin(&self) -> LambdaClient {
        self.client(ADMIN)
    }

    /// A client signing with `key`.
    pub fn client(&self, key: (&str, &str)) -> LambdaClient {
        super::cli::signed_client(&self.endpoint, key)
    }

    /// Stops the daemon (SIGTERM) and returns its log.
    pub fn stop(&mut self) -> String {
        self.end().logs
    }

    /// Stops the daemon (SIGTERM): its log, and whether its test host had
    /// ended in an emulator stall.
    fn end(&mut self) -> Ended {
        let logs = match self.place.take() {
            Some(Where::Host(mut child)) => {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let until = Instant::now() + Duration::from_secs(30);
                while Instant::now() < until {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
                std::fs::read_to_string(&self.log).unwrap_or_default()
            }
            Some(Where::TestHost { run, stop_port }) => {
                let stopper = LambdaClient::new(&format!("http://127.0.0.1:{stop_port}"), None);
                let _ = stopper.request("GET", "/cgi-bin/stop", &[], b"");
                match run.join() {
                    Ok(Ok(out)) => format!("{}\n{}", out.output, out.console),
                    Ok(Err(e @ TestHostError::Stalled { .. })) => {
                        return Ended {
                            logs: format!("test host failed: {e}"),
                            stalled: true,
                        }
                    }
                    Ok(Err(e)) => format!("test host failed: {e}"),
                    Err(_) => "test host thread panicked".into(),
                }
            }
            None => String::new(),
        };
        Ended {
            logs,
            stalled: false,
        }
    }

    /// The output of the CGI script `name` that the test copied into the
    /// test host as `/work/cgi/<name>` (run there as root, beside the
    /// daemon), called with `query` as its `QUERY_STRING`; test-host mode
    /// only (`None` otherwise).
    pub fn cgi(&self, name: &str, query: &str) -> Option<String> {
        let Some(Where::TestHost { stop_port, .. }) = &self.place else {
            return None;
        };
        let c = LambdaClient::new(&format!("http://127.0.0.1:{stop_port}"), None);
        let r = c
            .request("GET", &format!("/cgi-bin/{name}?{query}"), &[], b"")
            .expect("the test host's CGI");
        Some(r.text())
    }

    /// Restarts the daemon (SIGTERM, then a new one on the same data
    /// directory) and waits until it answers again.
    pub fn restart(&mut self) {
        match &self.place {
            Some(Where::TestHost { stop_port, .. }) => {
                let c = LambdaClient::new(&format!("http://127.0.0.1:{stop_port}"), None);
                let r = c
                    .request("GET", "/cgi-bin/restart", &[], b"")
                    .expect("the test host's restart CGI");
                assert!(r.text().contains("restarted"), "{}", r.text());
                assert!(
                    wait_ready(&self.endpoint, Duration::from_secs(300), || true),
                    "the daemon did not come back"
                );
            }
            Some(Where::Host(_)) => {
                let (config, extra) = self
                    .host_args
                    .clone()
                    .expect("host mode keeps its arguments");
                let data = self.data_dir.clone();
                let _ = self.stop();
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                let fresh = Self::on_host(&config, &data, &extra);
                *self = fresh;
            }
            None => panic!("the daemon is stopped"),
        }
    }

    /// The daemon's process id, host mode only.
    pub fn pid(&self) -> Option<u32> {
        match &self.place {
            Some(Where::Host(child)) => Some(child.id()),
            _ => None,
        }
    }

    /// The daemon's resident memory (`VmRSS`) in KiB, host mode only.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Kills the daemon at once (no graceful shutdown), host mode only.
    pub fn kill_hard(&mut self) {
        if let Some(Where::Host(mut child)) = self.place.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
