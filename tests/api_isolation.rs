//! What strangers and tenant keys cannot do to the daemon or learn from it
//! (issue 19, findings 1 and 7), through real HTTP against a daemon on this
//! host: none of these requests needs a VM.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::daemon::{config, scratch, TestDaemon};

/// How one stranger's upload went.
#[derive(Debug)]
struct Upload {
    /// The answer's head (status line and headers), if one came.
    status: Option<String>,
    /// Body bytes the client had handed to its socket when the answer came
    /// (or when it gave up waiting).
    sent_before_answer: usize,
    /// Why no answer came, if none did (shown when the test fails).
    #[allow(dead_code)]
    error: Option<String>,
}

/// Body bytes a stranger may have sent before its 403 at the latest.
const REFUSED_WITHIN: usize = 1 << 20;
/// Bytes each upload announces.
const ANNOUNCED: usize = 60 << 20;
/// One write of the body.
const CHUNK: usize = 64 << 10;

/// Uploads `ANNOUNCED` bytes to `route` with `authorization` (none if
/// `None`) as a client that reads the answer while it sends: it sends the
/// head and a chunk, waits up to a second for an answer, sends another
/// chunk, and so on; once answered it
/// tries to send the rest at full speed (the daemon should have hung up).
/// It gives up, unanswered, once it sent [`REFUSED_WITHIN`] bytes.
fn upload(addr: &str, route: &str, authorization: Option<&str>) -> Upload {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let r = loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break Ok(String::from_utf8_lossy(&got[..end]).to_string());
            }
            match reader.read(&mut buf) {
                Ok(0) => break Err("closed without an answer".to_string()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e.to_string()),
            }
        };
        let _ = tx.send(r);
    });
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{route} HTTP/1.1\r\nHost: silo\r\nContent-Type: application/json\r\n{auth}\
         X-Amz-Date: 20261207T120000Z\r\nContent-Length: {ANNOUNCED}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("sending the head");
    // The first chunk right behind the head, as clients send it.
    let chunk = vec![b' '; CHUNK];
    let _ = s.write_all(&chunk);
    let mut sent = CHUNK;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(status)) => {
                let at = sent;
                // The rest, as a client that does not read answers would:
                // the daemon must not be reading it.
                while sent < ANNOUNCED && s.write_all(&chunk).is_ok() {
                    sent += CHUNK;
                }
                return Upload {
                    status: Some(status),
                    sent_before_answer: at,
                    error: None,
                };
            }
            Ok(Err(e)) => {
                return Upload {
                    status: None,
                    sent_before_answer: sent,
                    error: Some(e),
                }
            }
            Err(_) if sent >= REFUSED_WITHIN => {
                return Upload {
                    status: None,
                    sent_before_answer: sent,
                    error: Some("no answer yet".into()),
                }
            }
            Err(_) => {
                if let Err(e) = s.write_all(&chunk) {
                    // Hung up without an answer we could read.
                    let answer = rx.recv_timeout(Duration::from_secs(5));
                    return match answer {
                        Ok(Ok(status)) => Upload {
                            status: Some(status),
                            sent_before_answer: sent,
                            error: None,
                        },
                        _ => Upload {
                            status: None,
                            sent_before_answer: sent,
                            error: Some(format!("sending: {e}")),
                        },
                    };
                }
                sent += CHUNK;
            }
        }
    }
}

/// Samples a process's VmRSS (KiB) every 10 ms into `peak` until `stop`.
fn sample_rss(
    pid: u32,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Issue 19, finding 1: 80 strangers at once upload (announcing 60 MiB
/// each, to CreateFunction and UpdateFunctionCode, which take up to 70 MB)
/// with an `Authorization` header that does not parse, one that names a key
/// the daemon does not know (well-formed or cut short), or none: each gets
/// its 403 before it sent 1 MiB, and the daemon's memory stays flat.
#[test]
fn strangers_get_their_403_before_their_bodies_whatever_their_authorization() {
    let data = scratch("strangers-data");
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let addr = d.endpoint.trim_start_matches("http://").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let baseline = d.rss_kib().expect("the daemon's VmRSS");
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = sample_rss(d.pid().unwrap(), stop.clone(), peak.clone());
    let unknown = format!(
        "AWS4-HMAC-SHA256 Credential=AKIDUNKNOWN/20261207/us-east-1/lambda/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date, Signature={}",
        "0".repeat(64)
    );
    let shapes: Vec<(Option<String>, &str)> = vec![
        (Some("x".into()), "IncompleteSignatureException"),
        (
            Some("AWS4-HMAC-SHA256 Credential=AKIDUNKNOWN/...".into()),
            "IncompleteSignatureException",
        ),
        (Some(unknown), "UnrecognizedClientException"),
        (None, "MissingAuthenticationTokenException"),
    ];
    let routes = [
        "POST /2015-03-31/functions",
        "PUT /2015-03-31/functions/victim/code",
    ];
    let uploads: Vec<_> = (0..80)
        .map(|i| {
            let (auth, _) = shapes[i % shapes.len()].clone();
            let (addr, route) = (addr.clone(), routes[(i / shapes.len()) % routes.len()]);
            std::thread::spawn(move || (i, upload(&addr, route, auth.as_deref())))
        })
        .collect();
    let mut results: Vec<_> = uploads.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    results.sort_by_key(|r| r.0);
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    let most = results
        .iter()
        .map(|(_, u)| u.sent_before_answer)
        .max()
        .unwrap_or(0);
    eprintln!(
        "daemon VmRSS {baseline} KiB before, grew by at most {grew} KiB; \
         the most body bytes sent before an answer: {most}"
    );
    let mut failed = Vec::new();
    for (i, u) in &results {
        let (auth, kind) = &shapes[i % shapes.len()];
        let head = u.status.as_deref().unwrap_or("").to_ascii_lowercase();
        let refused = head.starts_with("http/1.1 403 ")
            && head.contains(&format!("x-amzn-errortype: {}", kind.to_ascii_lowercase()));
        if !refused || u.sent_before_answer >= REFUSED_WITHIN {
            failed.push(format!(
                "upload {i} (Authorization {auth:?}, {kind}): {u:?}"
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 80 not refused with their 403 before {REFUSED_WITHIN} bytes:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(grew < 50 * 1024, "the daemon's memory grew by {grew} KiB");
    // The daemon still serves its own.
    let r = d
        .admin()
        .request("GET", "/2015-03-31/functions", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
}
