//! What strangers and tenant keys cannot do to the daemon or learn from it
//! (issue 19, findings 1 and 7), through real HTTP against a daemon on this
//! host: none of these requests needs a VM.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::daemon::{config, scratch, TestDaemon, TENANT_A};

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

/// Finding 1's refusal keeps `--allow-unauthenticated` working while no key
/// is configured: an unsigned upload is read and the function created.
#[test]
fn unsigned_uploads_are_read_when_no_key_is_configured_and_the_flag_is_given() {
    let data = scratch("anonymous-data");
    let d = TestDaemon::on_host(
        "[jail]\ncpu_full_at_mib = 0\n",
        &data,
        &["--allow-unauthenticated"],
    );
    let anonymous = silo_client::LambdaClient::new(&d.endpoint, None);
    let r = anonymous
        .create_function("open", &package(0), true, serde_json::json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
}

/// A Lambda zip whose `bootstrap` differs by `n`.
fn package(n: usize) -> Vec<u8> {
    silo_initramfs::package::make_zip(&[(
        "bootstrap",
        0o755,
        format!("#!/bin/sh\n# version {n}\nexit 0\n").as_bytes(),
    )])
}

fn create(c: &silo_client::LambdaClient, name: &str, extra: serde_json::Value) {
    let r = c.create_function(name, &package(0), true, extra).unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
}

fn update_code(c: &silo_client::LambdaClient, name: &str, zip: &[u8]) -> silo_client::HttpResponse {
    use base64::Engine;
    let body = serde_json::json!({
        "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip)
    });
    c.request(
        "PUT",
        &format!("/2015-03-31/functions/{name}/code"),
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap()
}

/// The permission bits of `p`.
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every path under `dir` (itself included) with its permission bits.
fn modes_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    let mut out = vec![(dir.to_path_buf(), mode(dir), true)];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(modes_under(&p));
        } else {
            out.push((p.clone(), mode(&p), false));
        }
    }
    out
}

/// Issue 19, finding 7: function records (which hold
/// `Environment.Variables`), packages and the function images in the run
/// directory are private to the daemon's user: the store's directories
/// 0700 and files 0600, the run directory 0700; a store an older daemon
/// left readable is tightened at start.
#[test]
fn records_code_and_images_are_private_to_the_daemon() {
    let data = scratch("private-data");
    let run = {
        let mut name = data.file_name().unwrap().to_os_string();
        name.push("-run");
        data.with_file_name(name)
    };
    let check = |when: &str| {
        let mut loose = Vec::new();
        for sub in ["functions", "code"] {
            for (p, m, dir) in modes_under(&data.join(sub)) {
                if m != if dir { 0o700 } else { 0o600 } {
                    loose.push(format!("{} {m:o}", p.display()));
                }
            }
        }
        let m = mode(&run);
        if m != 0o700 {
            loose.push(format!("{} {m:o}", run.display()));
        }
        let images = std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cpio"))
            .count();
        assert!(images > 0, "{when}: no function image in {}", run.display());
        assert!(
            loose.is_empty(),
            "{when}: readable by others:\n{}",
            loose.join("\n")
        );
    };
    let mut d = TestDaemon::on_host(&config(""), &data, &[]);
    create(
        &d.admin(),
        "secretive",
        serde_json::json!({"Environment": {"Variables": {"DB_PASSWORD": "hunter2"}}}),
    );
    let record = std::fs::read_to_string(data.join("functions/secretive.json")).unwrap();
    assert!(record.contains("hunter2"), "{record}");
    check("after CreateFunction");
    d.stop();
    // As an older daemon left them: world-readable.
    use std::os::unix::fs::PermissionsExt;
    for sub in ["functions", "code"] {
        for (p, _, dir) in modes_under(&data.join(sub)) {
            let m = if dir { 0o755 } else { 0o644 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
    }
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    check("after a restart over a world-readable store");
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&run);
}

/// Issue 19, finding 7: a tenant key may not read a function's pool state
/// (how many environments are ready and booting tells of every tenant's
/// traffic): 403 AccessDeniedException as for the other admin operations.
#[test]
fn pool_state_is_for_admin_keys_only() {
    let data = scratch("pool-read-data");
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    create(&admin, "pooled", serde_json::json!({}));
    let path = "/2015-03-31/functions/pooled/pool";
    let r = d.client(TENANT_A).request("GET", path, &[], b"").unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.error_type(),
        Some("AccessDeniedException"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("GetFunctionPool"), "{}", r.text());
    let r = admin.request("GET", path, &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["PoolSize"], 0);
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 19, finding 7: PutFunctionConcurrency and PutFunctionPool from 100
/// clients at once, racing UpdateFunctionCode: none writes back a record read
/// before the new code, so the stored record names code that is still in
/// the store and the revision whose image the daemon registered for the
/// scheduler; and the function survives a restart.
#[test]
fn settings_never_write_back_a_record_older_than_the_code() {
    let data = scratch("race-data");
    let run = {
        let mut name = data.file_name().unwrap().to_os_string();
        name.push("-run");
        data.with_file_name(name)
    };
    // As on a host with many cores: handlers run truly in parallel and a
    // thread can be preempted between reading a record and writing it.
    let threads = [("TOKIO_WORKER_THREADS", "32")];
    let mut d = TestDaemon::on_host_with_env(&config(""), &data, &[], &threads);
    let admin = d.admin();
    let r = admin
        .create_function("raced", &package(0), true, serde_json::json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    // Revisions in the order their UpdateFunctionCode returned.
    let revisions = Arc::new(std::sync::Mutex::new(vec![r.json()["RevisionId"]
        .as_str()
        .unwrap()
        .to_string()]));
    // 100 clients PUT reserved concurrency and pool size over and over
    // (100 at once) while UpdateFunctionCode runs 20 times.
    let stop = Arc::new(AtomicBool::new(false));
    let puts: Vec<_> = (0..100)
        .map(|i| {
            let (c, stop) = (d.admin(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (path, body) = if i % 2 == 0 {
                        (
                            "/2017-10-31/functions/raced/concurrency",
                            format!("{{\"ReservedConcurrentExecutions\": {}}}", i % 50),
                        )
                    } else {
                        (
                            "/2015-03-31/functions/raced/pool",
                            "{\"PoolSize\": 0}".to_string(),
                        )
                    };
                    let r = c.request("PUT", path, &[], body.as_bytes()).unwrap();
                    assert_eq!(r.status, 200, "{path}: {}", r.text());
                    n += 1;
                }
                n
            })
        })
        .collect();
    // A reader: once an update returned, the record never shows an older
    // revision again.
    let reader = {
        let (c, stop, revisions) = (d.admin(), stop.clone(), revisions.clone());
        std::thread::spawn(move || {
            let mut stale = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let known = revisions.lock().unwrap().len();
                let r = c
                    .request("GET", "/2015-03-31/functions/raced", &[], b"")
                    .unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                let rev = r.json()["Configuration"]["RevisionId"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let revisions = revisions.lock().unwrap();
                if let Some(at) = revisions.iter().position(|x| *x == rev) {
                    if at + 1 < known {
                        stale.push(format!("revision {at} after update {} returned", known - 1));
                    }
                }
            }
            stale
        })
    };
    let mut last_sha = String::new();
    for n in 1..=20 {
        let r = update_code(&admin, "raced", &package(n));
        assert_eq!(r.status, 200, "{}", r.text());
        last_sha = r.json()["CodeSha256"].as_str().unwrap().to_string();
        let rev = r.json()["RevisionId"].as_str().unwrap().to_string();
        revisions.lock().unwrap().push(rev);
    }
    // The PUTs go on a little after the last update.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let puts: usize = puts.into_iter().map(|t| t.join().unwrap()).sum();
    let stale = reader.join().unwrap();
    eprintln!("{puts} PUTs raced 20 UpdateFunctionCode");
    assert!(
        stale.is_empty(),
        "an older record was written back over new code: {stale:?}"
    );
    let r = admin
        .request("GET", "/2015-03-31/functions/raced", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let conf = r.json()["Configuration"].clone();
    let (sha, rev) = (
        conf["CodeSha256"].as_str().unwrap().to_string(),
        conf["RevisionId"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        sha, last_sha,
        "the record names older code than the last UpdateFunctionCode's"
    );
    let hex: String = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&sha)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let code = data.join(format!("code/{hex}.zip"));
    assert!(
        code.exists(),
        "the record names code {sha}, not in the store"
    );
    let image = run.join(format!("raced-raced@{rev}.cpio"));
    assert!(
        image.exists(),
        "revision {rev} has no registered image: the scheduler runs another; run dir: {:?}",
        std::fs::read_dir(&run)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<_>>()
    );
    d.stop();
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let r = d
        .admin()
        .request("GET", "/2015-03-31/functions/raced", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "after a restart: {}", r.text());
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&run);
}
