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
    /// Not output: the pump reached sync marker `n` in the stream (every
    /// byte the runtime wrote before it has been queued).
    pub sync: Option<u64>,
}

/// Starts a sync marker line the agent writes into the runtime's output
/// pipes (behind everything the runtime wrote before it: pipes keep order).
const SYNC_MARKER: &str = "\0silo-output-sync:";

/// Where a managed runtime's tree is in the guest: the read-only image
/// mounted there, or the copy unpacked from the initramfs.
pub const GUEST_RUNTIME_ROOT: &str = "/rt";

/// The file at a runtime tree's root describing how to start it.
pub const DESCRIPTOR: &str = "silo-runtime.json";

/// A managed runtime (`python3.11`, `nodejs22.x`): the tree's
/// `silo-runtime.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ManagedRuntime {
    /// Lambda runtime id.
    pub name: String,
    /// Program and arguments, guest paths (the handler is appended when
    /// `append_handler`), e.g. `python3.11 -m awslambdaric`; arguments under
    /// a link's guest path are resolved like the program.
    pub exec: Vec<String>,
    /// Whether `_HANDLER` is passed as the last argument.
    #[serde(default)]
    pub append_handler: bool,
    /// Environment set over Lambda's (PATH, LD_LIBRARY_PATH, ...).
    #[serde(default)]
    pub environment: std::collections::BTreeMap<String, String>,
    /// Guest paths that point into the tree: (path, path in the tree).
    #[serde(default)]
    pub links: Vec<(String, String)>,
    /// The tree on this machine (`/rt` in a guest).
    #[serde(skip)]
    pub root: PathBuf,
    /// Whether [`ManagedRuntime::links`] are in place (a guest); else (host
    /// mode) guest paths are rewritten into the tree.
    #[serde(skip)]
    pub linked: bool,
}

impl ManagedRuntime {
    /// Reads the runtime tree at `root`, if it holds a descriptor.
    pub fn load(root: &Path) -> Result<Option<Self>, String> {
        let path = root.join(DESCRIPTOR);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut rt: Self =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if rt.exec.is_empty() {
            return Err(format!("{}: empty exec", path.display()));
        }
        rt.root = root.to_path_buf();
        Ok(Some(rt))
    }

    /// Makes the guest paths point into the tree (symlinks in the root
    /// filesystem, which is the VM's own tmpfs); a path that already exists
    /// is left alone.
    pub fn link(&mut self) -> Result<(), String> {
        for (guest, inner) in &self.links {
            let guest = Path::new(guest);
            if guest.symlink_metadata().is_ok() {
                continue;
            }
            if let Some(parent) = guest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
            }
            std::os::unix::fs::symlink(self.root.join(inner), guest)
                .map_err(|e| format!("linking {} into the runtime: {e}", guest.display()))?;
        }
        self.linked = true;
        Ok(())
    }

    /// A guest path as this machine sees it: itself once linked, else
    /// rewritten into the tree by the longest matching link.
    fn resolve(&self, guest: &str) -> String {
        if self.linked {
            return guest.to_string();
        }
        self.links
            .iter()
            .filter(|(g, _)| {
                guest == g
                    || guest
                        .strip_prefix(g.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
            .max_by_key(|(g, _)| g.len())
            .map(|(g, inner)| format!("{}{}", self.root.join(inner).display(), &guest[g.len()..]))
            .unwrap_or_else(|| guest.to_string())
    }

    /// A `:`-separated list of guest paths, resolved element by element.
    fn resolve_list(&self, list: &str) -> String {
        list.split(':')
            .map(|p| self.resolve(p))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A running runtime.
pub struct Runtime {
    /// Its pid (also its process group).
    pub pid: i32,
    /// The agent's own copies of the write ends of the runtime's stdout and
    /// stderr pipes, for sync markers; closed with this value (then the
    /// pumps see the end of the output once the runtime is gone too).
    sync_writers: Vec<std::fs::File>,
}

/// A pipe for the runtime's output: (read end, write end for the runtime,
/// the agent's copy of the write end).
fn output_pipe() -> Result<(std::fs::File, Stdio, std::fs::File), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("output pipe: {e}"))?;
    let mine = w.try_clone().map_err(|e| format!("output pipe: {e}"))?;
    Ok((
        std::fs::File::from(r),
        Stdio::from(w),
        std::fs::File::from(mine),
    ))
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
        managed: Option<&ManagedRuntime>,
        api_addr: &str,
        logs: SyncSender<OutputLine>,
        dropped: Arc<Mutex<u64>>,
        ctx: Context,
    ) -> Result<Self, String> {
        let root = Path::new(&config.task_root);
        let (program, mut cmd) = match managed {
            // As Lambda's runtime bootstrap: the runtime's own program, from
            // the task root, with the handler (`python3 -m awslambdaric
            // module.function`).
            Some(m) => {
                let program = PathBuf::from(m.resolve(&m.exec[0]));
                let mut cmd = Command::new(&program);
                // Arguments that are guest paths in the tree (node's
                // `--require /var/runtime/...`) are resolved like the program.
                cmd.args(m.exec[1..].iter().map(|a| m.resolve(a)));
                if m.append_handler {
                    cmd.arg(&config.handler);
                }
                (program, cmd)
            }
            None => {
                let bootstrap = bootstrap_path(root).ok_or_else(|| {
                    format!("no bootstrap executable in {} or /opt", root.display())
                })?;
                (bootstrap.clone(), Command::new(bootstrap))
            }
        };
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
            .stdin(Stdio::null());
        if config.container_credentials {
            // Never AWS_ACCESS_KEY_ID: the SDKs' chains find these instead.
            cmd.envs(crate::credentials::runtime_env(api_addr));
        }
        if let Some(m) = managed {
            for (k, v) in &m.environment {
                cmd.env(k, m.resolve_list(v));
            }
        }
        let (out_r, out_w, out_mine) = output_pipe()?;
        let (err_r, err_w, err_mine) = output_pipe()?;
        cmd.stdout(out_w).stderr(err_w).process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        // (The runtime's write ends were closed here with `cmd`'s copies
        // when spawn returned.)
        drop(cmd);
        let pid = child.id() as i32;
        pump(
            out_r,
            LogStream::Stdout,
            logs.clone(),
            dropped.clone(),
            ctx.clone(),
        );
        pump(err_r, LogStream::Stderr, logs, dropped, ctx);
        // The reaper thread collects the exit status; the Child is not waited on.
        drop(child);
        Ok(Self {
            pid,
            sync_writers: vec![out_mine, err_mine],
        })
    }

    /// Writes sync marker `n` behind the runtime's output on stdout and
    /// stderr; each pump reports it ([`OutputLine::sync`]) once it has
    /// queued everything before it. Returns how many markers were written.
    pub fn sync_output(&self, n: u64) -> usize {
        use std::io::Write;
        let line = format!("{SYNC_MARKER}{n}\n");
        self.sync_writers
            .iter()
            .filter(|w| {
                let mut f: &std::fs::File = w;
                f.write_all(line.as_bytes()).is_ok()
            })
            .count()
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
                        let mut line =
                            String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf))
                                .into_owned();
                        let (request_id, tenant_id) = ctx.lock().expect("ctx lock").clone();
                        // A sync marker, possibly behind a partial line the
                        // runtime left without a newline.
                        let mut sync = None;
                        if let Some(at) = line.find(SYNC_MARKER) {
                            sync = line[at + SYNC_MARKER.len()..].parse::<u64>().ok();
                            line.truncate(at);
                        }
                        if let Some(n) = sync {
                            if !line.is_empty() {
                                let _ = tx.try_send(OutputLine {
                                    request_id: request_id.clone(),
                                    tenant_id: tenant_id.clone(),
                                    stream,
                                    line,
                                    sync: None,
                                });
                            }
                            // Never dropped: the agent waits for it.
                            if tx
                                .send(OutputLine {
                                    request_id,
                                    tenant_id,
                                    stream,
                                    line: String::new(),
                                    sync: Some(n),
                                })
                                .is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        match tx.try_send(OutputLine {
                            request_id,
                            tenant_id,
                            stream,
                            line,
                            sync: None,
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
