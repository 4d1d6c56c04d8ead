//! The function's runtime process: started from `bootstrap` with Lambda's
//! environment, its output pumped line by line (bounded, lossy under flood),
//! killed as a process group on timeout, and reaped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use silo_proto::{AgentConfig, LogStream, MAX_LOG_LINE};

/// Lines buffered between the runtime and the host; beyond this they are dropped.
pub const LOG_QUEUE: usize = 1024;

/// Exit statuses of reaped children, by pid.
#[derive(Clone, Default)]
pub struct Reaper {
    exited: Arc<(Mutex<HashMap<i32, String>>, Condvar)>,
}

/// Starts the thread that reaps every child (PID 1 must also reap orphans).
pub fn start_reaper(_pid1: bool) -> Reaper {
    let reaper = Reaper::default();
    let r = reaper.clone();
    let _ = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            match waitpid(None::<Pid>, None) {
                Ok(WaitStatus::Exited(pid, code)) => r.record(pid, format!("exit status {code}")),
                Ok(WaitStatus::Signaled(pid, sig, _)) => r.record(pid, format!("killed by {sig}")),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        });
    reaper
}

impl Reaper {
    fn record(&self, pid: Pid, status: String) {
        let (m, cv) = &*self.exited;
        m.lock().expect("reaper lock").insert(pid.as_raw(), status);
        cv.notify_all();
    }

    /// The exit status of `pid` if it has ended (consumed).
    pub fn take_exit(&self, pid: i32) -> Option<String> {
        self.exited.0.lock().expect("reaper lock").remove(&pid)
    }
}

/// The request and tenant in flight, shared with the output pumps.
pub type Context = Arc<Mutex<(Option<String>, Option<String>)>>;

/// One line of runtime output, tagged with what was in flight when it was read.
pub struct OutputLine {
    /// Request in flight.
    pub request_id: Option<String>,
    /// Tenant in flight.
    pub tenant_id: Option<String>,
    /// stdout or stderr.
    pub stream: LogStream,
    /// The text, without newline.
    pub line: String,
}

/// A running runtime.
pub struct Runtime {
    /// Its pid (also its process group).
    pub pid: i32,
}

/// Finds the runtime entry point: `<task_root>/bootstrap`, else `/opt/bootstrap`.
pub fn bootstrap_path(task_root: &Path) -> Option<PathBuf> {
    [task_root.join("bootstrap"), PathBuf::from("/opt/bootstrap")]
        .into_iter()
        .find(|p| p.is_file())
}

impl Runtime {
    /// Starts `bootstrap` with Lambda's environment; output goes to `logs`.
    pub fn spawn(
        config: &AgentConfig,
        api_addr: &str,
        logs: SyncSender<OutputLine>,
        dropped: Arc<Mutex<u64>>,
        ctx: Context,
    ) -> Result<Self, String> {
        let root = Path::new(&config.task_root);
        let bootstrap = bootstrap_path(root)
            .ok_or_else(|| format!("no bootstrap executable in {} or /opt", root.display()))?;
        let mut cmd = Command::new(&bootstrap);
        cmd.current_dir(root)
            .env_clear()
            .envs(&config.environment)
            .env("_HANDLER", &config.handler)
            .env("LAMBDA_TASK_ROOT", root)
            .env("LAMBDA_RUNTIME_DIR", root)
            .env("AWS_LAMBDA_RUNTIME_API", api_addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", &config.function_name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                config.memory_mib.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", config.function_name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "silo")
            .env("AWS_REGION", &config.region)
            .env("AWS_DEFAULT_REGION", &config.region)
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided")
            .env("TZ", ":UTC")
            .env("LANG", "en_US.UTF-8")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/opt/bin")
            .env(
                "LD_LIBRARY_PATH",
                format!("{}/lib:/opt/lib:/lib64:/usr/lib64", root.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bootstrap.display()))?;
        let pid = child.id() as i32;
        if let Some(out) = child.stdout.take() {
            pump(
                out,
                LogStream::Stdout,
                logs.clone(),
                dropped.clone(),
                ctx.clone(),
            );
        }
        if let Some(err) = child.stderr.take() {
            pump(err, LogStream::Stderr, logs, dropped, ctx);
        }
        // The reaper thread collects the exit status; the Child is not waited on.
        drop(child);
        Ok(Self { pid })
    }

    /// Kills the runtime and everything it started.
    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

/// Reads `src` line by line (each line cut at MAX_LOG_LINE) into `tx`,
/// dropping (and counting) lines when the host falls behind.
fn pump<R: Read + Send + 'static>(
    src: R,
    stream: LogStream,
    tx: SyncSender<OutputLine>,
    dropped: Arc<Mutex<u64>>,
    ctx: Context,
) {
    let _ = std::thread::Builder::new()
        .name("log-pump".into())
        .spawn(move || {
            let mut r = BufReader::new(src);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match (&mut r)
                    .take(MAX_LOG_LINE as u64)
                    .read_until(b'\n', &mut buf)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf))
                            .into_owned();
                        let (request_id, tenant_id) = ctx.lock().expect("ctx lock").clone();
                        match tx.try_send(OutputLine {
                            request_id,
                            tenant_id,
                            stream,
                            line,
                        }) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => {
                                *dropped.lock().expect("dropped lock") += 1
                            }
                            Err(TrySendError::Disconnected(_)) => return,
                        }
                    }
                }
            }
        });
}
