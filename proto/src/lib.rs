//! The protocol between the silo host and its guest agent.
//!
//! A stream (vsock in a VM, a Unix socket in host mode) carries frames:
//!
//! ```text
//! +--------+---------+----------+-----------------+------------------------+
//! | "SILO" | major:u8| minor:u8 | len: u16 LE = 0 | body_len: u32 LE       | body (postcard)
//! +--------+---------+----------+-----------------+------------------------+
//! ```
//!
//! The header is 12 bytes. A peer rejects any frame whose magic or major
//! version differs, or whose body is over [`MAX_FRAME_BODY`], before
//! allocating for it. Bodies are [`Message`]s encoded with postcard;
//! payloads travel as raw bytes.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"SILO";
/// Major protocol version: peers must agree.
pub const VERSION_MAJOR: u8 = 1;
/// Minor protocol version: additions that old peers can ignore.
pub const VERSION_MINOR: u8 = 2;
/// Header length in bytes.
pub const HEADER_LEN: usize = 12;
/// Largest invoke request or response payload: 6 MB, as Lambda's synchronous limit.
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;
/// Largest frame body: a full payload plus room for the other fields.
pub const MAX_FRAME_BODY: usize = MAX_PAYLOAD + 64 * 1024;
/// Largest log line carried in one frame; longer lines are cut.
pub const MAX_LOG_LINE: usize = 16 * 1024;
/// The vsock port the agent connects to on the host.
pub const AGENT_PORT: u32 = 1024;

/// Guest boot timing, in the guest kernel's own clock (CLOCK_BOOTTIME).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTiming {
    /// Kernel uptime when the agent started (ns).
    pub kernel_uptime_at_agent_start_ns: u64,
    /// Kernel uptime when the agent was ready to serve (ns).
    pub kernel_uptime_at_ready_ns: u64,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    /// The function's stdout.
    Stdout,
    /// The function's stderr.
    Stderr,
    /// The agent itself.
    Agent,
}

/// A function error, in Lambda's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Lambda error type, e.g. `Runtime.ExitError`, `Sandbox.Timedout`.
    pub error_type: String,
    /// Human-readable message.
    pub error_message: String,
    /// The function's stack trace, as its runtime reported it (Lambda's
    /// `stackTrace`; empty when there is none).
    pub stack_trace: Vec<String>,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Agent -> host, first frame: the agent is ready.
    Hello {
        /// Agent build version.
        agent_version: String,
        /// Boot timing as the guest saw it.
        boot: BootTiming,
    },
    /// Host -> agent: run one invocation.
    Invoke {
        /// Lambda request id.
        request_id: String,
        /// Tenant the invocation belongs to.
        tenant_id: Option<String>,
        /// Deadline, milliseconds since the Unix epoch, in the host's wall
        /// clock: informational. The agent enforces the function's timeout
        /// from the invoke's arrival on its own clocks (host and guest wall
        /// clocks need not agree), and the host its own deadline besides.
        deadline_unix_ms: u64,
        /// Function ARN.
        function_arn: String,
        /// X-Ray style trace header.
        trace_id: String,
        /// Event payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Agent -> host: the outcome of an invocation.
    Result {
        /// The invocation's request id.
        request_id: String,
        /// Response payload or function error.
        outcome: Outcome,
    },
    /// Agent -> host: a line of output.
    Log {
        /// Request in flight, if any.
        request_id: Option<String>,
        /// Tenant in flight, if any.
        tenant_id: Option<String>,
        /// Source.
        stream: LogStream,
        /// The line, without newline.
        line: String,
    },
    /// Host -> agent: end the VM.
    Shutdown,
    /// Host -> agent, for a pre-booted environment (bound to no tenant
    /// yet): answer [`Message::InitDone`] once the runtime's init is over,
    /// that is once it first asks for an invocation (`invocation/next`),
    /// reports an init error, or exits. (Added in minor version 1.)
    AwaitInit,
    /// Agent -> host: the answer to [`Message::AwaitInit`].
    InitDone {
        /// Why the runtime cannot serve (`Runtime.ExitError`, an init error
        /// it reported, ...); `None` when it is waiting for an invocation.
        error: Option<ErrorInfo>,
    },
    /// Host -> agent, before an [`Message::Invoke`]: the credentials of
    /// the VM's tenant, which the agent serves on its container-credentials
    /// endpoint from now on (until the next ones). (Added in minor
    /// version 2.)
    Credentials(TenantCredentials),
}

/// Credentials the agent serves to the function (the shape of the
/// container-credentials endpoint's answer).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCredentials {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: String,
    /// `Token` (the session token).
    pub token: String,
    /// `Expiration`, RFC 3339 (`2026-12-07T15:28:33Z`).
    pub expiration: String,
}

impl std::fmt::Debug for TenantCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// The outcome of one invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The function's response.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The function (or its runtime) failed.
    Err(ErrorInfo),
}

/// Protocol errors.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The stream does not start with the frame magic.
    #[error("bad frame magic {0:02x?}: the peer does not speak the silo protocol")]
    BadMagic([u8; 4]),
    /// The peer speaks another major version.
    #[error("protocol version {0}.x is not supported (this side speaks {VERSION_MAJOR}.x)")]
    Version(u8),
    /// The frame announces a body over the limit.
    #[error("frame body of {0} bytes is over the {MAX_FRAME_BODY}-byte limit")]
    TooLarge(usize),
    /// A payload is over the 6 MB limit.
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(usize),
    /// Reserved header bytes were not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// The body is not a valid message.
    #[error("malformed frame body: {0}")]
    Body(#[from] postcard::Error),
    /// The stream failed or ended.
    #[error("protocol stream: {0}")]
    Io(#[from] std::io::Error),
}

fn check_payload(msg: &Message) -> Result<(), ProtoError> {
    let len = match msg {
        Message::Invoke { payload, .. } => payload.len(),
        Message::Result {
            outcome: Outcome::Ok(p),
            ..
        } => p.len(),
        _ => 0,
    };
    if len > MAX_PAYLOAD {
        return Err(ProtoError::PayloadTooLarge(len));
    }
    Ok(())
}

/// Encodes `msg` as one frame (header + body).
pub fn encode(msg: &Message) -> Result<Vec<u8>, ProtoError> {
    check_payload(msg)?;
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME_BODY {
        return Err(ProtoError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION_MAJOR);
    frame.push(VERSION_MINOR);
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Parses a frame header and returns the body length it announces.
pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<usize, ProtoError> {
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    if h[4] != VERSION_MAJOR {
        return Err(ProtoError::Version(h[4]));
    }
    if h[6] != 0 || h[7] != 0 {
        return Err(ProtoError::Reserved);
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if len > MAX_FRAME_BODY {
        return Err(ProtoError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame body.
pub fn decode_body(body: &[u8]) -> Result<Message, ProtoError> {
    let msg: Message = postcard::from_bytes(body)?;
    check_payload(&msg)?;
    Ok(msg)
}

/// Incremental decoder: feed bytes as they arrive, take messages out.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. After
    /// an error the stream is unusable.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtoError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("header length");
        let len = parse_header(&header)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        msg.map(Some)
    }
}

/// Writes one message to a blocking stream.
pub fn write_message<W: Write>(w: &mut W, msg: &Message) -> Result<(), ProtoError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one message from a blocking stream.
pub fn read_message<R: Read>(r: &mut R) -> Result<Message, ProtoError> {
    let mut header = [0u8; HEADER_LEN];
    r.read_exact(&mut header)?;
    let len = parse_header(&header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode_body(&body)
}

/// Async helpers for tokio streams.
#[cfg(feature = "tokio")]
pub mod asynchronous {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Writes one message.
    pub async fn write_message<W: AsyncWrite + Unpin>(
        w: &mut W,
        msg: &Message,
    ) -> Result<(), ProtoError> {
        w.write_all(&encode(msg)?).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads one message.
    pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, ProtoError> {
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header).await?;
        let len = parse_header(&header)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        decode_body(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn invoke(payload: Vec<u8>) -> Message {
        Message::Invoke {
            request_id: "r-1".into(),
            tenant_id: Some("tenant-A".into()),
            deadline_unix_ms: 1_700_000_000_000,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
            trace_id: "Root=1-0-0".into(),
            payload,
        }
    }

    #[test]
    fn round_trips_through_stream_and_decoder() {
        let msgs = vec![
            Message::Hello {
                agent_version: "0.1.0".into(),
                boot: BootTiming {
                    kernel_uptime_at_agent_start_ns: 1,
                    kernel_uptime_at_ready_ns: 2,
                },
            },
            invoke(b"{\"x\":1}".to_vec()),
            Message::Result {
                request_id: "r-1".into(),
                outcome: Outcome::Err(ErrorInfo {
                    error_type: "Runtime.ExitError".into(),
                    error_message: "exit status 7".into(),
                    stack_trace: vec!["  File \"x.py\", line 1".into()],
                }),
            },
            Message::Log {
                request_id: None,
                tenant_id: None,
                stream: LogStream::Stderr,
                line: "hi".into(),
            },
            Message::Shutdown,
            Message::AwaitInit,
            Message::InitDone { error: None },
            Message::InitDone {
                error: Some(ErrorInfo {
                    error_type: "Runtime.ExitError".into(),
                    error_message: "exit status 3".into(),
                    stack_trace: Vec::new(),
                }),
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_message(&mut wire, m).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            assert_eq!(&read_message(&mut r).unwrap(), m);
        }
        // Byte by byte through the incremental decoder.
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs);
    }

    #[test]
    fn payload_is_raw_bytes_not_inflated() {
        let frame = encode(&invoke(vec![0xab; 100_000])).unwrap();
        assert!(frame.len() < 100_300, "{}", frame.len());
    }

    #[test]
    fn malformed_frames_are_errors() {
        let good = encode(&Message::Shutdown).unwrap();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(matches!(
            read_message(&mut &bad_magic[..]),
            Err(ProtoError::BadMagic(_))
        ));
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        let e = read_message(&mut &bad_version[..]).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_message(&mut &huge[..]),
            Err(ProtoError::TooLarge(_))
        ));
        let truncated = &good[..good.len() - 1];
        assert!(matches!(
            read_message(&mut &truncated[..]),
            Err(ProtoError::Io(_))
        ));
        let mut garbage = good.clone();
        garbage[HEADER_LEN] = 200; // no such variant
        assert!(matches!(
            read_message(&mut &garbage[..]),
            Err(ProtoError::Body(_))
        ));
    }

    #[test]
    fn oversized_payloads_are_refused_both_ways() {
        let big = invoke(vec![0; MAX_PAYLOAD + 1]);
        assert!(matches!(encode(&big), Err(ProtoError::PayloadTooLarge(_))));
        assert!(encode(&invoke(vec![0; MAX_PAYLOAD])).is_ok());
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = FrameDecoder::new();
            d.push(&bytes);
            let _ = d.next_message();
            let _ = read_message(&mut &bytes[..]);
        }

        #[test]
        fn decoder_never_panics_on_valid_header_garbage_body(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut frame = Vec::new();
            frame.extend_from_slice(&MAGIC);
            frame.extend_from_slice(&[VERSION_MAJOR, 0, 0, 0]);
            frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
            frame.extend_from_slice(&body);
            let _ = read_message(&mut &frame[..]);
        }

        #[test]
        fn invoke_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2048), tenant in "[a-zA-Z0-9._-]{1,40}") {
            let mut m = invoke(payload);
            if let Message::Invoke { tenant_id, .. } = &mut m { *tenant_id = Some(tenant); }
            let frame = encode(&m).unwrap();
            prop_assert_eq!(read_message(&mut &frame[..]).unwrap(), m);
        }
    }
}

/// The agent's settings, written by the host into the guest initramfs as
/// `/silo/agent.json` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Function name.
    pub function_name: String,
    /// Function ARN.
    pub function_arn: String,
    /// `_HANDLER` for the runtime.
    pub handler: String,
    /// Memory size in MiB (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`).
    pub memory_mib: u32,
    /// Function timeout in seconds.
    pub timeout_s: u32,
    /// Extra environment variables for the runtime.
    pub environment: std::collections::BTreeMap<String, String>,
    /// Region reported to the function.
    pub region: String,
    /// Host vsock port to connect to.
    pub host_port: u32,
    /// Size limit of `/tmp` in MiB.
    pub tmp_mib: u32,
    /// Directory holding the function code (`/var/task` in a VM).
    pub task_root: String,
    /// The function has a tenant role: the agent serves the
    /// container-credentials endpoint and points the runtime's AWS SDKs
    /// at it (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    #[serde(default)]
    pub container_credentials: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            function_name: "function".into(),
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:function".into(),
            handler: "handler".into(),
            memory_mib: 128,
            timeout_s: 3,
            environment: Default::default(),
            region: "us-east-1".into(),
            host_port: AGENT_PORT,
            tmp_mib: 512,
            task_root: "/var/task".into(),
            container_credentials: false,
        }
    }
}
