//! Limits that hold before authentication, and the bounded Event queue
//! (issue 11, items 2 and 6): hostile clients over raw TCP.

use super::*;

/// An answer read off a raw TCP connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    error_type: Option<String>,
    /// How long after the request's head was sent it came.
    after: std::time::Duration,
}

/// Sends `head` (and `body`, ignoring a connection closed while sending
/// it) on a new connection and reads the answer's head, waiting at most
/// `wait` for it.
fn raw_request(addr: &str, head: &str, body: &[u8], wait: Duration) -> Result<RawAnswer, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(wait)).unwrap();
    s.set_write_timeout(Some(wait)).unwrap();
    let sent = Instant::now();
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let _ = s.write_all(body);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(format!(
                    "closed without an answer after {:?}",
                    sent.elapsed()
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} after {:?}", sent.elapsed())),
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let error_type = text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("x-amzn-errortype")
            .then(|| v.trim().to_string())
    });
    Ok(RawAnswer {
        status,
        error_type,
        after: sent.elapsed(),
    })
}

/// How long until the daemon closes a connection on which `drip` sends one
/// byte per second (nothing if empty); `None` if still open after `give_up`.
fn closed_after(addr: &str, drip: &[u8], give_up: Duration) -> Option<Duration> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let start = Instant::now();
    let mut i = 0;
    let mut buf = [0u8; 1024];
    while start.elapsed() < give_up {
        if !drip.is_empty() {
            if s.write_all(&drip[i % drip.len()..][..1]).is_err() {
                return Some(start.elapsed());
            }
            i += 1;
        }
        match s.read(&mut buf) {
            // Closed, or an answer (e.g. 408) before closing: either way the
            // daemon gave up on this connection.
            Ok(_) => return Some(start.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Issue 11, item 2 (limits before authentication): oversized requests are
/// refused from their headers alone, unsigned ones before their body is
/// read, slow and idle connections are closed, oversized headers refused,
/// and signed clients are served all along with the daemon's memory flat.
#[test]
fn hostile_clients_are_refused_before_their_bodies_and_signed_clients_are_served() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let data = scratch("hostile-data");
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    assert_eq!(create(&admin, "victim", true).status, 201);
    let addr = d.endpoint.trim_start_matches("http://").to_string();
    let baseline = d.rss_kib().expect("the daemon's VmRSS");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));

    // The daemon's memory, sampled while the attack runs.
    let pid = d.pid().unwrap();
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
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
    };
    // A signed client that must keep being served.
    let signed = {
        let (stop, admin) = (stop.clone(), d.admin());
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = admin.request("GET", "/2015-03-31/functions/victim", &[], b"");
                answers.push((r.map(|r| r.status).map_err(|e| e.to_string()), t.elapsed()));
                std::thread::sleep(Duration::from_millis(50));
            }
            answers
        })
    };
    // Slow-loris: headers one byte a second, never finished; and a
    // connection that sends nothing at all.
    let loris: Vec<_> = [
        b"GET /2015-03-31/functions HTTP/1.1\r\nHost: silo\r\nX-Slow: ".to_vec(),
        Vec::new(),
    ]
    .into_iter()
    .map(|drip| {
        let addr = addr.clone();
        std::thread::spawn(move || closed_after(&addr, &drip, Duration::from_secs(25)))
    })
    .collect();

    // 200 unsigned requests at once, each announcing 70 MB to an operation
    // that takes far less: all refused at once.
    let routes = [
        "GET /2015-03-31/functions",
        "GET /2015-03-31/functions/victim",
        "DELETE /2015-03-31/functions/victim",
        "POST /2015-03-31/functions/victim/invocations",
        "PUT /2015-03-31/functions/victim/configuration",
    ];
    let big: Vec<_> = (0..200)
        .map(|i| {
            let (addr, route) = (addr.clone(), routes[i % routes.len()]);
            std::thread::spawn(move || {
                let head = format!(
                    "{route} HTTP/1.1\r\nHost: silo\r\nContent-Type: application/json\r\nContent-Length: 70000000\r\n\r\n"
                );
                (route, raw_request(&addr, &head, b"", Duration::from_secs(10)))
            })
        })
        .collect();
    for t in big {
        let (route, r) = t.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("{route}: {e}"));
        assert_eq!(r.status, 413, "{route}: {r:?}");
        assert_eq!(
            r.error_type.as_deref(),
            Some("RequestTooLargeException"),
            "{route}"
        );
        assert!(
            r.after < Duration::from_secs(3),
            "{route}: not at once: {r:?}"
        );
    }
    // Unsigned uploads within the size limit, bodies actually sent (8 MB to
    // CreateFunction, 1 MB to Invoke): refused before the body is read.
    let sent: Vec<_> = (0..80)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let (route, len) = if i % 2 == 0 {
                    ("POST /2015-03-31/functions", 8 << 20)
                } else {
                    ("POST /2015-03-31/functions/victim/invocations", 1 << 20)
                };
                let head = format!(
                    "{route} HTTP/1.1\r\nHost: silo\r\nX-Amz-Tenant-Id: t\r\nContent-Length: {len}\r\n\r\n"
                );
                raw_request(&addr, &head, &vec![b' '; len], Duration::from_secs(10))
            })
        })
        .collect();
    let mut refused = 0;
    for t in sent {
        // The daemon may close before the whole body is sent: then the
        // client sees a reset instead of the 403, which is fine.
        if let Ok(r) = t.join().unwrap() {
            assert_eq!(r.status, 403, "{r:?}");
            assert_eq!(
                r.error_type.as_deref(),
                Some("MissingAuthenticationTokenException")
            );
            refused += 1;
        }
    }
    eprintln!("{refused} of 80 unsigned uploads saw their 403 (the others a reset)");
    // Oversized headers: refused (431), not buffered.
    let r = raw_request(
        &addr,
        &format!(
            "GET /2015-03-31/functions HTTP/1.1\r\nHost: silo\r\nX-Big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        ),
        b"",
        Duration::from_secs(10),
    );
    assert!(
        matches!(&r, Ok(a) if a.status == 431) || r.is_err(),
        "64 KiB of headers: {r:?}"
    );

    for (i, t) in loris.into_iter().enumerate() {
        let closed = t.join().unwrap();
        assert!(
            closed.is_some_and(|c| c < Duration::from_secs(15)),
            "slow connection {i} still open or closed late: {closed:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let answers = signed.join().unwrap();
    assert!(answers.len() >= 10, "{answers:?}");
    for (r, took) in &answers {
        assert_eq!(r.as_ref().ok(), Some(&200), "{answers:?}");
        assert!(*took < Duration::from_secs(3), "{answers:?}");
    }
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!("daemon VmRSS: {baseline} KiB before, grew by at most {grew} KiB");
    assert!(grew < 50 * 1024, "the daemon's memory grew by {grew} KiB");
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 11, item 6 (the Event queue is bounded): 5,000 Event invokes of a
/// function whose invokes are all throttled (reserved concurrency 0: each
/// accepted event is held for minutes of retries, the load that must stay
/// bounded) against a queue of 100: at most 100 are taken, the rest get
/// 429 TooManyRequestsException with a Reason, and the daemon's memory
/// stays flat.
#[test]
fn event_invokes_beyond_the_queue_are_refused_and_memory_stays_flat() {
    let data = scratch("evq-data");
    let d = TestDaemon::on_host(&config("[limits]\nevent_queue = 100\n"), &data, &[]);
    let admin = d.admin();
    assert_eq!(create(&admin, "held", false).status, 201);
    let r = admin
        .request(
            "PUT",
            "/2017-10-31/functions/held/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let before = d.rss_kib().unwrap();
    // 32 KiB of JSON each: 5,000 held would be 160 MB.
    let payload = format!("\"{}\"", "a".repeat(32 * 1024 - 2));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (c, payload) = (d.admin(), payload.clone());
            std::thread::spawn(move || {
                let event = InvokeOptions {
                    invocation_type: Some("Event".into()),
                    ..Default::default()
                };
                let (mut accepted, mut refused) = (0, 0);
                for _ in 0..1250 {
                    let r = c.invoke("held", payload.as_bytes(), &event).unwrap();
                    match r.status {
                        202 => accepted += 1,
                        429 => {
                            assert_eq!(r.error_type(), Some("TooManyRequestsException"));
                            assert!(r.json()["Reason"].is_string(), "{}", r.text());
                            refused += 1;
                        }
                        s => panic!("{s}: {}", r.text()),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for t in threads {
        let (a, r) = t.join().unwrap();
        accepted += a;
        refused += r;
    }
    let grew = d.rss_kib().unwrap().saturating_sub(before);
    eprintln!("{accepted} accepted, {refused} refused; VmRSS grew by {grew} KiB");
    assert!(refused >= 4900, "{accepted} accepted, {refused} refused");
    assert!(accepted <= 100, "{accepted} accepted");
    assert!(grew < 50 * 1024, "the daemon's memory grew by {grew} KiB");
    // The daemon still answers at once.
    let r = admin
        .request("GET", "/2015-03-31/functions/held", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    let _ = std::fs::remove_dir_all(&data);
}
