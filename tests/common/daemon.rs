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

mod constructors;
mod scripts;

// Not every test binary uses the script pieces.
#[allow(unused_imports)]
pub use scripts::*;

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
/// `SILO_TESTHOST_STALL_RETRIES` (default 2), the budget of
/// [`TestHost::run`]'s own retry, which a daemon's test host cannot use (its
/// clients here would be left talking to nobody).
fn stall_retries() -> u32 {
    std::env::var(silo_images::testhost::STALL_RETRIES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// The interval of a daemon test host's console heartbeat; four missed ones
/// end its run as a stall.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Where a daemon runs.
enum Where {
    Host(Child),
    TestHost {
        run: JoinHandle<Result<TestHostOutput, TestHostError>>,
        stop_port: u16,
    },
}

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
