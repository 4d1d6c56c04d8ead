//! Invocations and the runtime's init over the agent channel.

use std::time::{Duration, Instant};

use silo_proto::asynchronous::{read_message, write_message};
use silo_proto::{ErrorInfo, LogStream, Message, Outcome};
use tokio::io::{AsyncRead, AsyncWrite};

use super::guest_text::{guest_text, guest_text_tail};
use super::{EnvError, InvokeResult, VmEnv, LOG_TAIL, RESULT_GRACE};
use crate::logs::{LogTap, Platform};

/// How long a broken exchange waits for the VMM's exit status.
const VMM_EXIT_WAIT: Duration = Duration::from_secs(1);

/// Where an exchange's log lines go beside the tail: the environment's
/// tap, with the tenant and request the daemon knows (never the guest's
/// claim).
#[derive(Clone, Copy)]
struct Tap<'a> {
    tap: Option<&'a LogTap>,
    tenant: Option<&'a str>,
    request_id: Option<&'a str>,
}

/// Sends `msg` (an invoke for request `id`) over `conn` and reads frames
/// until its result, collecting the invocation's log lines into `tail`;
/// the write and the wait together must finish within `limit`, else
/// [`EnvError::TimedOut`].
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    msg: &Message,
    id: &str,
    limit: Duration,
    tail: &mut Vec<u8>,
    log: Tap<'_>,
) -> Result<Outcome, EnvError> {
    let run = async {
        write_message(conn, msg)
            .await
            .map_err(|e| EnvError::Protocol(format!("sending invoke: {e}")))?;
        loop {
            match read_message(conn).await {
                Ok(Message::Result {
                    request_id,
                    outcome,
                }) if request_id == id => return Ok(outcome),
                Ok(Message::Result { request_id, .. }) => {
                    return Err(EnvError::Protocol(format!(
                        "result for unknown request {}",
                        guest_text(&request_id)
                    )))
                }
                Ok(Message::Log { line, stream, .. }) => keep_log(tail, &line, stream, log),
                Ok(other) => {
                    return Err(EnvError::Protocol(format!(
                        "unexpected message {}",
                        message_kind(&other)
                    )))
                }
                Err(e) => return Err(EnvError::Protocol(format!("{e}"))),
            }
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| EnvError::TimedOut)?
}

/// The name of a message's kind, for an error about it (its fields are the
/// guest's and may be megabytes).
pub(super) fn message_kind(msg: &Message) -> &'static str {
    match msg {
        Message::Hello { .. } => "Hello",
        Message::Invoke { .. } => "Invoke",
        Message::Result { .. } => "Result",
        Message::Log { .. } => "Log",
        Message::Shutdown => "Shutdown",
        Message::AwaitInit => "AwaitInit",
        Message::InitDone { .. } => "InitDone",
        Message::Credentials(_) => "Credentials",
    }
}

/// Keeps a function output line (and the agent's own `[silo]` lines) in
/// `tail`, which holds at most about two [`LOG_TAIL`]s, and hands it to
/// the log tap (which never blocks).
fn keep_log(tail: &mut Vec<u8>, line: &str, stream: LogStream, log: Tap<'_>) {
    if let Some(t) = log.tap {
        t.line(log.tenant, log.request_id, stream, line);
    }
    if stream != LogStream::Agent || line.starts_with("[silo]") {
        tail.extend_from_slice(line.as_bytes());
        tail.push(b'\n');
        if tail.len() > 2 * LOG_TAIL {
            tail.drain(..tail.len() - LOG_TAIL);
        }
    }
}

/// Sends [`Message::AwaitInit`] over `conn` and reads frames until the
/// agent's [`Message::InitDone`], collecting output into `tail`; within
/// `limit`, else [`EnvError::TimedOut`]. `Ok(Some(..))`: the runtime cannot
/// serve.
async fn exchange_init<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    limit: Duration,
    tail: &mut Vec<u8>,
    log: Tap<'_>,
) -> Result<Option<ErrorInfo>, EnvError> {
    let run = async {
        write_message(conn, &Message::AwaitInit)
            .await
            .map_err(|e| EnvError::Protocol(format!("sending AwaitInit: {e}")))?;
        loop {
            match read_message(conn).await {
                Ok(Message::InitDone { error }) => return Ok(error),
                Ok(Message::Log { line, stream, .. }) => keep_log(tail, &line, stream, log),
                Ok(other) => {
                    return Err(EnvError::Protocol(format!(
                        "unexpected message while awaiting init: {}",
                        message_kind(&other)
                    )))
                }
                Err(e) => return Err(EnvError::Protocol(format!("{e}"))),
            }
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| EnvError::TimedOut)?
}

impl VmEnv {
    /// Sends `msg` (no answer expected) within 5 s; any failure leaves the
    /// channel broken.
    pub async fn send(&mut self, msg: &Message) -> Result<(), EnvError> {
        if self.broken {
            return Err(EnvError::Protocol(
                "the agent channel failed earlier; the environment must be destroyed".into(),
            ));
        }
        let r = tokio::time::timeout(Duration::from_secs(5), write_message(&mut self.conn, msg))
            .await
            .map_err(|_| EnvError::TimedOut)
            .and_then(|r| {
                r.map_err(|e| EnvError::Protocol(format!("sending {}: {e}", message_kind(msg))))
            });
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// For a pre-booted environment (bound to no tenant yet): returns once
    /// the function's runtime has finished its init (Lambda's init phase:
    /// it asked for its first invocation), within `limit`. A runtime that
    /// exits, reports an init error or does not finish in time fails it
    /// ([`EnvError::InitFailed`], [`EnvError::TimedOut`]); the environment
    /// must then be destroyed.
    pub async fn await_init(&mut self, limit: Duration) -> Result<(), EnvError> {
        if self.broken {
            return Err(EnvError::Protocol(
                "the agent channel failed earlier; the environment must be destroyed".into(),
            ));
        }
        let mut tail = std::mem::take(&mut self.init_tail);
        self.pooled = true;
        if let Some(t) = &self.logs {
            t.init_start(None, self.started.elapsed());
        }
        let log = Tap {
            tap: self.logs.as_ref(),
            tenant: None,
            request_id: None,
        };
        let r = exchange_init(&mut self.conn, limit, &mut tail, log).await;
        if tail.len() > LOG_TAIL {
            tail.drain(..tail.len() - LOG_TAIL);
        }
        let init_error_type = match &r {
            Ok(Some(e)) => Some(e.error_type.clone()),
            _ => None,
        };
        let r = match r {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(EnvError::InitFailed(format!(
                "{}: {}{}",
                guest_text(&e.error_type),
                guest_text(&e.error_message),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; its output ends with {}",
                        guest_text_tail(&String::from_utf8_lossy(&tail))
                    )
                }
            ))),
            Err(e) => Err(e),
        };
        self.init_tail = tail;
        if let (Err(e), Some(t)) = (&r, &self.logs) {
            let (status, error_type) = match e {
                EnvError::TimedOut => ("timeout", None),
                _ => ("error", init_error_type.as_deref()),
            };
            t.platform(
                None,
                None,
                Duration::ZERO,
                Platform::InitReport {
                    duration: self.started.elapsed(),
                    status,
                    error_type,
                },
            );
        }
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Runs one invocation: sending it and waiting for its result together
    /// take at most `deadline` (the function's timeout) plus
    /// [`RESULT_GRACE`], else [`EnvError::TimedOut`]. After any error the
    /// channel is not written to again; the environment must be destroyed.
    pub async fn invoke(
        &mut self,
        msg: Message,
        deadline: Duration,
    ) -> Result<InvokeResult, EnvError> {
        let Message::Invoke {
            request_id,
            tenant_id,
            ..
        } = &msg
        else {
            return Err(EnvError::Protocol(
                "invoke() takes an Invoke message".into(),
            ));
        };
        if self.broken {
            return Err(EnvError::Protocol(
                "the agent channel failed earlier; the environment must be destroyed".into(),
            ));
        }
        let id = request_id.clone();
        let tenant = tenant_id.clone();
        // The last invocation's REPORT comes before this one's records.
        self.report_written().await;
        // A cold start's first invocation: its init is this environment's
        // life so far (the scheduler's create), as the REPORT's Init
        // Duration.
        let cold_init = (self.boot.timeline.first_invocation_answered_ms.is_none() && !self.pooled)
            .then(|| self.started.elapsed());
        if let Some(t) = &self.logs {
            if let Some(init) = cold_init {
                t.init_start(tenant.as_deref(), init);
            }
            t.platform(
                tenant.as_deref(),
                Some(&id),
                Duration::ZERO,
                Platform::Start,
            );
        }
        let started = Instant::now();
        let mut tail: Vec<u8> = std::mem::take(&mut self.init_tail);
        let log = Tap {
            tap: self.logs.as_ref(),
            tenant: tenant.as_deref(),
            request_id: Some(&id),
        };
        // One deadline for the write and the wait: a guest that stops
        // reading cannot hold the invocation (and its slot) past it.
        let outcome = exchange(
            &mut self.conn,
            &msg,
            &id,
            deadline + RESULT_GRACE,
            &mut tail,
            log,
        )
        .await;
        let duration = started.elapsed();
        let status = match &outcome {
            Ok(Outcome::Ok(_)) => "success",
            Ok(Outcome::Err(e)) if e.error_type == "Sandbox.Timedout" => "timeout",
            Ok(Outcome::Err(e)) if e.error_type == "Runtime.ExitError" => "failure",
            Ok(Outcome::Err(_)) => "error",
            Err(EnvError::TimedOut) => "timeout",
            Err(_) => "failure",
        };
        // A cold start's runtime that reported an init error (Lambda's are
        // all `Runtime.*`; a handler's error is its exception's name; a
        // runtime that exited, `Runtime.ExitError`, may have exited in the
        // handler, so it is left to REPORT): Lambda's INIT_REPORT, before
        // END.
        if let (Some(init), Some(t), Ok(Outcome::Err(e))) = (cold_init, &self.logs, &outcome) {
            if e.error_type.starts_with("Runtime.") && e.error_type != "Runtime.ExitError" {
                t.platform(
                    tenant.as_deref(),
                    Some(&id),
                    Duration::ZERO,
                    Platform::InitReport {
                        duration: init + duration,
                        status: "error",
                        error_type: Some(&e.error_type),
                    },
                );
            }
        }
        self.log_end(tenant, id, duration, cold_init, status);
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.broken = true;
                return Err(self.vmm_exit_or(e).await);
            }
        };
        if tail.len() > LOG_TAIL {
            tail.drain(..tail.len() - LOG_TAIL);
        }
        if self.boot.timeline.first_invocation_answered_ms.is_none() {
            self.boot.timeline.first_invocation_answered_ms =
                Some(self.started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(InvokeResult {
            outcome,
            log_tail: tail,
            duration,
        })
    }

    /// Why an exchange broke: the VMM's exit when it has exited (a killed
    /// VMM closes the agent channel on its way out, so its status follows
    /// within moments), else `e`.
    async fn vmm_exit_or(&mut self, e: EnvError) -> EnvError {
        if matches!(e, EnvError::TimedOut) {
            return e;
        }
        match tokio::time::timeout(VMM_EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::warn!(
                    function = %self.label.function,
                    tenant_id = ?self.label.tenant_id.as_deref().unwrap_or("-"),
                    %status,
                    error = %e,
                    "the VMM exited during an invocation"
                );
                EnvError::VmmExited(status.to_string())
            }
            _ => e,
        }
    }

    /// END and REPORT of an invocation, with the daemon's own measures:
    /// END now, REPORT after the answer ([`VmEnv::report_later`]).
    fn log_end(
        &mut self,
        tenant: Option<String>,
        id: String,
        duration: Duration,
        init: Option<Duration>,
        status: &'static str,
    ) {
        let Some(t) = &self.logs else { return };
        t.platform(
            tenant.as_deref(),
            Some(&id),
            Duration::ZERO,
            Platform::End { status },
        );
        self.report_later(tenant, id, duration, init, status);
    }
}
