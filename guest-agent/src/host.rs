//! The agent's side of the host connection: hello, then invocations one at a
//! time, each result tagged with its request id; runtime output forwarded as
//! log frames tagged with the request and tenant in flight.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
use silo_proto::{
    read_message, write_message, AgentConfig, BootTiming, ErrorInfo, LogStream, Message, Outcome,
};

use crate::runtime::{Context, ManagedRuntime, OutputLine, Reaper, Runtime, LOG_QUEUE};
use crate::runtime_api::{ApiEvent, Invocation, RuntimeApi};

/// The host's vsock CID.
const HOST_CID: u32 = 2;

/// Connects to the host over vsock.
pub fn connect_vsock(port: u32) -> Result<File, String> {
    let mut last = String::new();
    for _ in 0..100 {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("vsock socket: {e}"))?;
        match connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(HOST_CID, port),
        ) {
            Ok(()) => return Ok(File::from(fd)),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("vsock connect to host port {port}: {last}"))
}

/// Connects to the host over a Unix socket (host mode).
pub fn connect_unix(path: &Path) -> Result<File, String> {
    let s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(File::from(std::os::fd::OwnedFd::from(s)))
}

/// The agent serving one host connection.
pub struct Agent {
    reader: File,
    writer: Arc<Mutex<File>>,
    config: AgentConfig,
    api: RuntimeApi,
    api_addr: String,
    reaper: Reaper,
    runtime: Option<Runtime>,
    /// The managed runtime to start instead of the task's `bootstrap`.
    managed: Option<ManagedRuntime>,
    /// When the current runtime was started, until its init is reported.
    init_started: Option<Instant>,
    bound_tenant: Option<Option<String>>,
    context: Context,
    logs_tx: std::sync::mpsc::SyncSender<OutputLine>,
    dropped: Arc<Mutex<u64>>,
    synced: Synced,
    next_sync: u64,
    /// Told when the VM goes busy and idle (PID 1 with a balloon only).
    idle: Option<crate::idle::IdleReclaim>,
}

/// Sync markers the log forwarder has passed: (marker, how many streams).
type Synced = Arc<(Mutex<(u64, usize)>, std::sync::Condvar)>;

/// How long a result waits for the runtime's output written before it.
const OUTPUT_SYNC_LIMIT: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// The function's timeout (at least a second).
    fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.timeout_s.max(1)))
    }

    /// An agent on `stream`.
    pub fn new(
        stream: File,
        config: AgentConfig,
        api: RuntimeApi,
        reaper: Reaper,
        api_addr: String,
        managed: Option<ManagedRuntime>,
    ) -> Self {
        let writer = Arc::new(Mutex::new(stream.try_clone().expect("dup host stream")));
        let context: Context = Arc::new(Mutex::new((None, None)));
        let (logs_tx, logs_rx) = sync_channel(LOG_QUEUE);
        let dropped = Arc::new(Mutex::new(0u64));
        let synced: Synced = Arc::default();
        forward_logs(
            logs_rx,
            writer.clone(),
            context.clone(),
            dropped.clone(),
            synced.clone(),
        );
        Self {
            reader: stream,
            writer,
            config,
            api,
            api_addr,
            reaper,
            runtime: None,
            managed,
            init_started: None,
            bound_tenant: None,
            context,
            logs_tx,
            dropped,
            synced,
            next_sync: 0,
            idle: None,
        }
    }

    /// Reclaims guest memory whenever the VM goes idle (see
    /// [`crate::idle`]); `None` never does.
    pub fn reclaim_when_idle(&mut self, idle: Option<crate::idle::IdleReclaim>) {
        self.idle = idle;
    }

    fn went_idle(&self) {
        if let Some(i) = &self.idle {
            i.idle();
        }
    }

    fn send(&self, msg: &Message) -> Result<(), String> {
        let mut w = self.writer.lock().expect("writer lock");
        write_message(&mut *w, msg).map_err(|e| format!("sending to host: {e}"))
    }

    /// Says hello, then serves until the host says Shutdown or goes away.
    pub fn serve(&mut self, started_ns: u64) -> Result<(), String> {
        // Start the runtime ahead of the first invoke, as Lambda's init phase.
        self.ensure_runtime();
        self.send(&Message::Hello {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot: BootTiming {
                kernel_uptime_at_agent_start_ns: started_ns,
                kernel_uptime_at_ready_ns: crate::pid1::uptime_ns(),
            },
        })?;
        self.went_idle();
        loop {
            let msg =
                read_message(&mut self.reader).map_err(|e| format!("reading from host: {e}"))?;
            match msg {
                Message::Invoke {
                    request_id,
                    tenant_id,
                    deadline_unix_ms: _,
                    function_arn,
                    trace_id,
                    payload,
                } => {
                    // The host's deadline is in the host's wall clock, which
                    // need not agree with this guest's (nested guests' clocks
                    // drift; a guest clock a few seconds ahead once made
                    // every invoke time out at once). The function's timeout
                    // runs from now on the guest's own clocks instead: the
                    // host sends an invoke the moment its environment is
                    // ready, and enforces its own deadline besides.
                    let inv = Invocation {
                        request_id: request_id.clone(),
                        tenant_id,
                        deadline_ms: now_ms() + self.timeout().as_millis() as u64,
                        function_arn,
                        trace_id,
                        payload,
                    };
                    if let Some(i) = &self.idle {
                        i.busy();
                    }
                    let outcome = self.invoke(inv);
                    self.send(&Message::Result {
                        request_id,
                        outcome,
                    })?;
                    self.went_idle();
                }
                Message::Shutdown => {
                    if let Some(rt) = self.runtime.take() {
                        rt.kill();
                    }
                    return Ok(());
                }
                Message::Credentials(c) => crate::credentials::set(c),
                Message::AwaitInit => {
                    let error = self.await_init();
                    self.send(&Message::InitDone { error })?;
                    self.went_idle();
                }
                other => return Err(format!("unexpected message from host: {other:?}")),
            }
        }
    }

    fn ensure_runtime(&mut self) -> Option<String> {
        if let Some(rt) = &self.runtime {
            match self.reaper.take_exit(rt.pid) {
                None => return None,
                Some(_) => self.runtime = None,
            }
        }
        self.api.runtime_started();
        self.init_started = Some(Instant::now());
        match Runtime::spawn(
            &self.config,
            self.managed.as_ref(),
            &self.api_addr,
            self.logs_tx.clone(),
            self.dropped.clone(),
            self.context.clone(),
        ) {
            Ok(rt) => {
                self.runtime = Some(rt);
                None
            }
            Err(e) => Some(e),
        }
    }

    /// For a pre-booted environment: waits until the runtime's init is
    /// over (its first `invocation/next`), at most the function's timeout.
    /// `None` when it is ready; else why it cannot serve.
    fn await_init(&mut self) -> Option<ErrorInfo> {
        let error = |error_type: &str, error_message: String| ErrorInfo {
            error_type: error_type.into(),
            error_message,
            stack_trace: Vec::new(),
        };
        if let Some(e) = self.ensure_runtime() {
            return Some(error("Runtime.InvalidEntrypoint", e));
        }
        let deadline = Instant::now() + self.timeout();
        loop {
            match self.api.wait_init(Duration::from_millis(20)) {
                Some(Ok(())) => return None,
                Some(Err(info)) => return Some(info),
                None => {}
            }
            let pid = self.runtime.as_ref().map(|r| r.pid);
            if let Some(status) = pid.and_then(|p| self.reaper.take_exit(p)) {
                self.runtime = None;
                return Some(self.api.take_init_error().unwrap_or_else(|| {
                    error(
                        "Runtime.ExitError",
                        format!("Runtime exited during init with error: {status}"),
                    )
                }));
            }
            if Instant::now() >= deadline {
                return Some(error(
                    "Sandbox.Timedout",
                    format!(
                        "the runtime's init did not finish within {} seconds",
                        self.config.timeout_s
                    ),
                ));
            }
        }
    }

    fn invoke(&mut self, inv: Invocation) -> Outcome {
        // One VM, one tenant, for life.
        match &self.bound_tenant {
            None => self.bound_tenant = Some(inv.tenant_id.clone()),
            Some(bound) if *bound != inv.tenant_id => {
                return Outcome::Err(ErrorInfo {
                    error_type: "Silo.TenantMismatch".into(),
                    error_message: "this execution environment is bound to another tenant".into(),
                    stack_trace: Vec::new(),
                })
            }
            Some(_) => {}
        }
        if let Some(e) = self.ensure_runtime() {
            return Outcome::Err(ErrorInfo {
                error_type: "Runtime.InvalidEntrypoint".into(),
                error_message: e,
                stack_trace: Vec::new(),
            });
        }
        *self.context.lock().expect("ctx lock") =
            (Some(inv.request_id.clone()), inv.tenant_id.clone());
        let id = inv.request_id.clone();
        let inv_tenant = inv.tenant_id.clone();
        let deadline = Instant::now() + self.timeout();
        self.api.submit(inv);
        let outcome = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.api.wait_event(left.min(Duration::from_millis(20))) {
                Some(ApiEvent::Response(rid, body)) if rid == id => break Outcome::Ok(body),
                Some(ApiEvent::Error(rid, info)) if rid == id => break Outcome::Err(info),
                Some(ApiEvent::InitError(info)) => {
                    self.kill_runtime();
                    break Outcome::Err(info);
                }
                Some(_) => continue,
                None => {}
            }
            let pid = self.runtime.as_ref().map(|r| r.pid);
            if let Some(status) = pid.and_then(|p| self.reaper.take_exit(p)) {
                self.runtime = None;
                // A runtime that reported an init error and then exited
                // (awslambdaric does) answers with that error.
                if let Some(info) = self.api.take_init_error() {
                    break Outcome::Err(info);
                }
                break Outcome::Err(ErrorInfo {
                    error_type: "Runtime.ExitError".into(),
                    error_message: format!(
                        "RequestId: {id} Error: Runtime exited with error: {status}"
                    ),
                    stack_trace: Vec::new(),
                });
            }
            if Instant::now() >= deadline {
                self.kill_runtime();
                break Outcome::Err(ErrorInfo {
                    error_type: "Sandbox.Timedout".into(),
                    error_message: format!(
                        "RequestId: {id} Error: Task timed out after {} seconds",
                        self.config.timeout_s
                    ),
                    stack_trace: Vec::new(),
                });
            }
        };
        if matches!(outcome, Outcome::Err(_)) {
            self.api.clear();
        }
        self.report_init(&id, inv_tenant);
        self.flush_output();
        // The context stays until the next invocation: output the runtime
        // printed just before responding is still read and tagged after it.
        outcome
    }

    /// Once per runtime start, after the first invoke it served: how long
    /// its init took (start to its first `invocation/next`, the guest's
    /// clock), as a log line of the invocation, like Lambda's `Init
    /// Duration`. Sent before the result, so it is in that invoke's log.
    fn report_init(&mut self, request_id: &str, tenant_id: Option<String>) {
        let Some(started) = self.init_started else {
            return;
        };
        let Some(ready) = self.api.first_next() else {
            return;
        };
        self.init_started = None;
        let ms = ready.saturating_duration_since(started).as_secs_f64() * 1e3;
        let runtime = self
            .managed
            .as_ref()
            .map_or("provided", |m| m.name.as_str());
        let _ = self.send(&Message::Log {
            request_id: Some(request_id.to_string()),
            tenant_id,
            stream: LogStream::Agent,
            line: format!("[silo] runtime init: {runtime} ready in {ms:.2} ms"),
        });
    }

    /// Waits (at most [`OUTPUT_SYNC_LIMIT`]) until everything the runtime
    /// wrote before now has been forwarded to the host, so that a function's
    /// output reaches the host before its result (and in that invoke's log
    /// tail), not behind it.
    fn flush_output(&mut self) {
        let Some(rt) = &self.runtime else {
            return;
        };
        self.next_sync += 1;
        let n = self.next_sync;
        let (m, cv) = &*self.synced;
        *m.lock().expect("sync lock") = (n, 0);
        let want = rt.sync_output(n);
        let deadline = Instant::now() + OUTPUT_SYNC_LIMIT;
        let mut s = m.lock().expect("sync lock");
        while s.1 < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = cv.wait_timeout(s, left).expect("sync lock").0;
        }
    }

    fn kill_runtime(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.kill();
        }
    }
}

/// Forwards runtime output to the host as Log frames.
fn forward_logs(
    rx: Receiver<OutputLine>,
    writer: Arc<Mutex<File>>,
    ctx: Context,
    dropped: Arc<Mutex<u64>>,
    synced: Synced,
) {
    let _ = std::thread::Builder::new()
        .name("log-forward".into())
        .spawn(move || loop {
            let line = match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => Some(l),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let (request_id, tenant_id) = ctx.lock().expect("ctx lock").clone();
            let mut msgs = Vec::new();
            let n = std::mem::take(&mut *dropped.lock().expect("dropped lock"));
            if n > 0 {
                msgs.push(Message::Log {
                    request_id: request_id.clone(),
                    tenant_id: tenant_id.clone(),
                    stream: LogStream::Agent,
                    line: format!(
                        "[silo] {n} log lines dropped: function output over the forwarding limit"
                    ),
                });
            }
            if let Some(n) = line.as_ref().and_then(|l| l.sync) {
                // Everything before the marker on that stream is written.
                let (m, cv) = &*synced;
                let mut s = m.lock().expect("sync lock");
                if s.0 == n {
                    s.1 += 1;
                    cv.notify_all();
                }
                continue;
            }
            if let Some(l) = line {
                msgs.push(Message::Log {
                    request_id: l.request_id,
                    tenant_id: l.tenant_id,
                    stream: l.stream,
                    line: l.line,
                });
            }
            let mut w = writer.lock().expect("writer lock");
            for m in &msgs {
                if write_message(&mut *w, m).is_err() {
                    return;
                }
            }
        });
}
