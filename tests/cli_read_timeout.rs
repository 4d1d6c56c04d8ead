//! `silo invoke` never waits forever: against a daemon that takes the
//! request and never answers (what a stuck daemon looks like to a client),
//! it gives up after its read timeout and says so. A stuck daemon is what
//! this must survive, so the server here is one that reads requests and
//! never answers invokes: no real daemon can be made to hang on purpose.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Serves `listener`: GetFunctionConfiguration answers `{"Timeout":
/// timeout_s}`; any other request is read and never answered (its
/// connection is kept open).
fn never_answering_daemon(listener: TcpListener, timeout_s: u64) {
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            // The rest of the head (the body, if any, is left unread).
            let mut h = String::new();
            while reader.read_line(&mut h).is_ok_and(|n| n > 0) && h != "\r\n" {
                h.clear();
            }
            if line.starts_with("GET ") && line.contains("/configuration") {
                let body = format!("{{\"FunctionName\":\"f\",\"Timeout\":{timeout_s}}}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            } else {
                held.push(stream);
            }
        }
    });
}

/// Runs `silo invoke` against `endpoint` with `args`; fails the test if it
/// is still waiting after `bound` (it is killed then). Returns its stderr.
fn invoke_until(endpoint: &str, args: &[&str], bound: Duration) -> (bool, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["invoke", "--name", "f", "--tenant", "t"])
        .args(args)
        .env("SILO_ENDPOINT", endpoint)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("silo invoke");
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("stderr");
            return (
                status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                started.elapsed(),
            );
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("silo invoke {args:?} still waited for its answer after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn silo_invoke_gives_up_on_a_daemon_that_never_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    never_answering_daemon(listener, 1);
    let (ok, stderr, took) = invoke_until(
        &endpoint,
        &["--read-timeout", "2"],
        Duration::from_secs(120),
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("no answer from the daemon within 2 s (--read-timeout)"),
        "{stderr}"
    );
    assert!(took >= Duration::from_secs(2), "gave up early: {took:?}");
    eprintln!("silo invoke gave up after {took:?}");
}
