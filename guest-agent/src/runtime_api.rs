//! The Lambda Runtime API (2018-06-01) served to the function's runtime on
//! 127.0.0.1:9001: `invocation/next`, `invocation/{id}/response`,
//! `invocation/{id}/error` and `init/error`.

use std::collections::VecDeque;
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use silo_proto::{ErrorInfo, MAX_PAYLOAD};

use crate::http::{read_request, write_response, ReadError, Request};

const PREFIX: &str = "/2018-06-01/runtime/";
/// Bytes of stack trace kept from a runtime's error report (whole lines;
/// the rest of the frame's headroom is for the message).
const MAX_STACK_BYTES: usize = 32 * 1024;
/// Bytes kept of an error message (Lambda cuts long ones too).
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// An invocation waiting for, or handed to, the runtime.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Request id.
    pub request_id: String,
    /// Tenant id.
    pub tenant_id: Option<String>,
    /// Deadline in ms since the Unix epoch, in this guest's wall clock
    /// (`Lambda-Runtime-Deadline-Ms`).
    pub deadline_ms: u64,
    /// Function ARN.
    pub function_arn: String,
    /// Trace header.
    pub trace_id: String,
    /// Event payload.
    pub payload: Vec<u8>,
}

/// What the runtime told the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiEvent {
    /// `POST invocation/{id}/response`.
    Response(String, Vec<u8>),
    /// `POST invocation/{id}/error`.
    Error(String, ErrorInfo),
    /// `POST init/error`.
    InitError(ErrorInfo),
}

#[derive(Default)]
struct State {
    next: Option<Invocation>,
    in_flight: Option<String>,
    events: VecDeque<ApiEvent>,
    /// When the current runtime first asked for an invocation (its init
    /// is done then).
    first_next: Option<Instant>,
}

/// The running API server and its shared state.
#[derive(Clone)]
pub struct RuntimeApi {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl RuntimeApi {
    /// Binds `addr` and serves in background threads.
    pub fn start(addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let api = Self {
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
        };
        let server = api.clone();
        std::thread::Builder::new()
            .name("runtime-api".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let api = server.clone();
                    let _ = std::thread::Builder::new()
                        .name("runtime-api-conn".into())
                        .spawn(move || api.serve_connection(conn));
                }
            })?;
        Ok(api)
    }

    /// Offers `inv` to the runtime's next `invocation/next`.
    pub fn submit(&self, inv: Invocation) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().expect("api lock");
        s.next = Some(inv);
        s.in_flight = None;
        // An init error the runtime reported before this invoke (a handler
        // that cannot be imported fails before the first `next`) stays: it
        // is this invoke's answer.
        s.events.retain(|e| matches!(e, ApiEvent::InitError(_)));
        cv.notify_all();
    }

    /// A new runtime process starts: its init has not finished yet.
    pub fn runtime_started(&self) {
        self.shared.0.lock().expect("api lock").first_next = None;
    }

    /// When the current runtime first called `invocation/next`, if it has.
    pub fn first_next(&self) -> Option<Instant> {
        self.shared.0.lock().expect("api lock").first_next
    }

    /// Takes a pending init error, if the runtime reported one.
    pub fn take_init_error(&self) -> Option<ErrorInfo> {
        let mut s = self.shared.0.lock().expect("api lock");
        let i = s
            .events
            .iter()
            .position(|e| matches!(e, ApiEvent::InitError(_)))?;
        match s.events.remove(i) {
            Some(ApiEvent::InitError(info)) => Some(info),
            _ => None,
        }
    }

    /// Waits up to `timeout` for the current runtime's init to end: `Ok`
    /// once it has asked for an invocation, `Err` with the init error it
    /// reported (left pending for the next invoke); `None` if neither
    /// happened yet.
    pub fn wait_init(&self, timeout: Duration) -> Option<Result<(), ErrorInfo>> {
        let (m, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut s = m.lock().expect("api lock");
        loop {
            let init_error = s.events.iter().find_map(|e| match e {
                ApiEvent::InitError(info) => Some(info.clone()),
                _ => None,
            });
            if let Some(info) = init_error {
                return Some(Err(info));
            }
            if s.first_next.is_some() {
                return Some(Ok(()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            s = cv.wait_timeout(s, left).expect("api lock").0;
        }
    }

    /// Waits up to `timeout` for the runtime to report something.
    pub fn wait_event(&self, timeout: Duration) -> Option<ApiEvent> {
        let (m, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut s = m.lock().expect("api lock");
        loop {
            if let Some(e) = s.events.pop_front() {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            s = cv.wait_timeout(s, left).expect("api lock").0;
        }
    }

    /// Forgets the current invocation (after a timeout or crash).
    pub fn clear(&self) {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().expect("api lock");
        s.next = None;
        s.in_flight = None;
        cv.notify_all();
    }

    fn serve_connection(&self, conn: TcpStream) {
        let Ok(mut writer) = conn.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(conn);
        loop {
            let req = match read_request(&mut reader, MAX_PAYLOAD + 1024) {
                Ok(r) => r,
                Err(ReadError::TooLarge) => {
                    let _ = error_response(
                        &mut writer,
                        413,
                        "RequestTooLarge",
                        "payload over the 6 MB limit",
                    );
                    return;
                }
                Err(ReadError::Malformed(m)) => {
                    let _ = error_response(&mut writer, 400, "InvalidRequest", &m);
                    return;
                }
                Err(ReadError::Closed | ReadError::Io(_)) => return,
            };
            let close = req.close;
            if self.handle(&req, &mut writer).is_err() || close {
                return;
            }
        }
    }

    fn handle(&self, req: &Request, w: &mut TcpStream) -> std::io::Result<()> {
        if req.path == crate::credentials::PATH {
            if req.method != "GET" {
                return error_response(w, 405, "MethodNotAllowed", "wrong method");
            }
            let (status, body) = crate::credentials::answer(req.header("authorization"));
            return write_response(
                w,
                status,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
        }
        let Some(route) = req.path.strip_prefix(PREFIX) else {
            return error_response(w, 404, "NotFound", "unknown path");
        };
        let parts: Vec<&str> = route.split('/').collect();
        match (req.method.as_str(), parts.as_slice()) {
            ("GET", ["invocation", "next"]) => {
                let inv = self.next_invocation();
                let deadline = inv.deadline_ms.to_string();
                let mut headers = vec![
                    ("Content-Type", "application/json"),
                    ("Lambda-Runtime-Aws-Request-Id", inv.request_id.as_str()),
                    ("Lambda-Runtime-Deadline-Ms", deadline.as_str()),
                    (
                        "Lambda-Runtime-Invoked-Function-Arn",
                        inv.function_arn.as_str(),
                    ),
                    ("Lambda-Runtime-Trace-Id", inv.trace_id.as_str()),
                ];
                if let Some(t) = &inv.tenant_id {
                    headers.push(("Lambda-Runtime-Aws-Tenant-Id", t.as_str()));
                }
                write_response(w, 200, &headers, &inv.payload)
            }
            ("POST", ["invocation", id, "response"]) => {
                if req.body.len() > MAX_PAYLOAD {
                    return error_response(
                        w,
                        413,
                        "RequestTooLarge",
                        "response over the 6 MB limit",
                    );
                }
                self.finish(id, ApiEvent::Response(id.to_string(), req.body.clone()), w)
            }
            ("POST", ["invocation", id, "error"]) => {
                let info = error_info(req, "Unhandled");
                self.finish(id, ApiEvent::Error(id.to_string(), info), w)
            }
            ("POST", ["init", "error"]) => {
                let info = error_info(req, "Runtime.InitError");
                self.push(ApiEvent::InitError(info));
                write_response(
                    w,
                    202,
                    &[("Content-Type", "application/json")],
                    br#"{"status":"OK"}"#,
                )
            }
            (_, ["invocation", ..] | ["init", ..]) => {
                error_response(w, 405, "MethodNotAllowed", "wrong method")
            }
            _ => error_response(w, 404, "NotFound", "unknown path"),
        }
    }

    fn next_invocation(&self) -> Invocation {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().expect("api lock");
        if s.first_next.is_none() {
            s.first_next = Some(Instant::now());
            // The runtime's init is over: wake `wait_init`.
            cv.notify_all();
        }
        loop {
            if let Some(inv) = s.next.take() {
                s.in_flight = Some(inv.request_id.clone());
                return inv;
            }
            s = cv.wait(s).expect("api lock");
        }
    }

    fn finish(&self, id: &str, event: ApiEvent, w: &mut TcpStream) -> std::io::Result<()> {
        let (m, cv) = &*self.shared;
        let mut s = m.lock().expect("api lock");
        if s.in_flight.as_deref() != Some(id) {
            drop(s);
            return error_response(w, 400, "InvalidRequestID", "Invalid request ID");
        }
        s.in_flight = None;
        s.events.push_back(event);
        cv.notify_all();
        drop(s);
        write_response(
            w,
            202,
            &[("Content-Type", "application/json")],
            br#"{"status":"OK"}"#,
        )
    }

    fn push(&self, event: ApiEvent) {
        let (m, cv) = &*self.shared;
        m.lock().expect("api lock").events.push_back(event);
        cv.notify_all();
    }
}

/// Error type and message from a runtime's error report: the JSON body's
/// `errorType`/`errorMessage`, else the `Lambda-Runtime-Function-Error-Type` header.
fn error_info(req: &Request, default_type: &str) -> ErrorInfo {
    let json: Option<serde_json::Value> = serde_json::from_slice(&req.body).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    ErrorInfo {
        error_type: field("errorType")
            .or_else(|| {
                req.header("lambda-runtime-function-error-type")
                    .map(str::to_string)
            })
            .unwrap_or_else(|| default_type.to_string()),
        error_message: field("errorMessage")
            .map(|m| {
                let mut end = m.len().min(MAX_MESSAGE_BYTES);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                m[..end].to_string()
            })
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&req.body[..req.body.len().min(4096)]).to_string()
            }),
        // Lambda's `stackTrace` (awslambdaric's shape) or `trace`
        // (aws-lambda-ric's, Node.js): lines as strings; bounded like the
        // rest of the result.
        stack_trace: json
            .as_ref()
            .and_then(|j| j.get("stackTrace").or_else(|| j.get("trace")))
            .and_then(|v| v.as_array())
            .map(|a| {
                let mut used = 0;
                a.iter()
                    .filter_map(|l| l.as_str())
                    .take_while(|l| {
                        used += l.len();
                        used <= MAX_STACK_BYTES
                    })
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn error_response(
    w: &mut TcpStream,
    status: u16,
    kind: &str,
    message: &str,
) -> std::io::Result<()> {
    let body = serde_json::json!({ "errorMessage": message, "errorType": kind }).to_string();
    write_response(
        w,
        status,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}
