//! The tenant-credentials broker against a real STS-compatible server:
//! `moto` (PyPI) in server mode, started by this test
//! (`tests/moto/server.py`, which records every AssumeRole request moto
//! receives and leaves moto's answers as they are).
//!
//! moto does not evaluate session policies: what is checked is what the
//! broker *asked* for (the rendered policy, the session tag, the source
//! identity, the session name), as moto received it, and which identity
//! the credentials it issued are (GetCallerIdentity, answered by moto from
//! its own record of the assumed role).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;
use silo_daemon::creds::chain::{ChainSource, HostCredentials};
use silo_daemon::creds::sts::{self, caller_identity, http_client};
use silo_daemon::creds::{session_name, Broker, TenantRole};

const ROLE: &str = "arn:aws:iam::123456789012:role/silo-tenant";
const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::bucket","Condition":{"StringLike":{"s3:prefix":["${tenant_id}/*"]}}},{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::bucket/${function_name}/${tenant_id}/*"}]}"#;

struct Moto {
    child: Child,
    endpoint: String,
    record: PathBuf,
    dir: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts moto (`extra`: `--auth-user KEYFILE`); panics saying what to
/// install if moto is missing.
fn moto(tag: &str, extra: &[&str]) -> Moto {
    let ok = Command::new("python3")
        .args(["-c", "import moto.server, werkzeug"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "moto is not installed: python3 -m pip install 'moto[server]' (.ci/run does)"
    );
    let dir = std::env::temp_dir().join(format!("silo-moto-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join("assume_role.jsonl");
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/moto/server.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string()])
        .arg(&record)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("moto listening"),
        "moto did not start: {line:?}"
    );
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        record,
        dir,
    }
}

fn role(endpoint: &str) -> TenantRole {
    TenantRole {
        role_arn: ROLE.into(),
        sts_endpoint: Some(endpoint.into()),
        sts_region: None,
        duration_seconds: 900,
        session_policy: POLICY.into(),
    }
}

fn host_keys(id: &str, secret: &str) -> ChainSource {
    ChainSource {
        env: Some(HashMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), id.to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string()),
        ])),
    }
}

fn recorded(m: &Moto) -> Vec<Value> {
    std::fs::read_to_string(&m.record)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The identity moto says credentials are.
async fn whose(endpoint: &str, c: &silo_daemon::creds::RoleCredentials) -> String {
    let creds = HostCredentials {
        access_key_id: c.issued.access_key_id.clone(),
        secret_access_key: c.issued.secret_access_key.clone(),
        session_token: Some(c.issued.session_token.clone()),
        expires_unix: None,
    };
    caller_identity(&http_client(), &creds, endpoint, "us-east-1")
        .await
        .expect("GetCallerIdentity")
}

/// What one AssumeRole asked moto for: the rendered policy with the
/// tenant's prefix, the session tag, SourceIdentity and session name; the
/// credentials are the assumed role's, session named for the tenant.
#[test]
fn assume_role_asks_for_the_tenants_policy_tag_and_names() {
    let m = moto("asks", &[]);
    let rt = runtime();
    let broker = Broker::with(
        host_keys("AKIDSILODAEMON", "secret"),
        Arc::new(sts::now_unix),
    );
    let r = role(&m.endpoint);
    for tenant in ["tenant-A", "tenant B/2"] {
        let c = rt
            .block_on(broker.credentials("reports", tenant, &r, Duration::from_secs(60)))
            .unwrap();
        assert!(c.issued.access_key_id.starts_with("ASIA"), "{:?}", c.issued);
        let arn = rt.block_on(whose(&m.endpoint, &c));
        assert_eq!(
            arn,
            format!(
                "arn:aws:sts::123456789012:assumed-role/silo-tenant/{}",
                session_name(tenant)
            )
        );
        let rec = recorded(&m);
        let form = &rec.last().unwrap()["form"];
        assert_eq!(rec.last().unwrap()["signer"], "AKIDSILODAEMON");
        assert_eq!(form["RoleArn"], ROLE);
        assert_eq!(form["RoleSessionName"], session_name(tenant).as_str());
        assert_eq!(form["SourceIdentity"], session_name(tenant).as_str());
        assert_eq!(form["DurationSeconds"], "900");
        assert_eq!(form["Tags.member.1.Key"], "tenant_id");
        assert_eq!(form["Tags.member.1.Value"], tenant);
        let policy: Value = serde_json::from_str(form["Policy"].as_str().unwrap()).unwrap();
        assert_eq!(
            policy["Statement"][0]["Condition"]["StringLike"]["s3:prefix"][0],
            format!("{tenant}/*")
        );
        assert_eq!(
            policy["Statement"][1]["Resource"],
            format!("arn:aws:s3:::bucket/reports/{tenant}/*")
        );
    }
    // Asked again: the cache answers, moto sees no new call.
    let before = recorded(&m).len();
    let again = rt
        .block_on(broker.credentials("reports", "tenant-A", &r, Duration::from_secs(60)))
        .unwrap();
    assert_eq!(recorded(&m).len(), before);
    assert_eq!(again.tenant, "tenant-A");
    assert!(broker
        .render_metrics()
        .contains("silo_tenant_credentials_assumed_total{function=\"reports\"} 2"));
}

#[derive(Debug, Clone)]
enum Op {
    /// A VM of (function, tenant) is bound or invoked: it gets credentials.
    Get(usize, usize),
    /// Time passes (seconds), up to past the credentials' expiry.
    Advance(i64),
    /// The function's role changed or it was deleted.
    Forget(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..3usize).prop_map(|(f, t)| Op::Get(f, t)),
        2 => (1..700i64).prop_map(Op::Advance),
        1 => (0..2usize).prop_map(Op::Forget),
    ]
}

/// Random bind / expiry / forget interleavings, with concurrent askers:
/// every credential handed out is, by moto's own account, an assumed-role
/// session of the tenant asked for; no access key id is ever handed to two
/// tenants; nothing handed out from the cache has less than five minutes
/// left on the broker's clock.
#[test]
fn tenant_b_never_receives_tenant_as_key() {
    let m = moto("prop", &[]);
    let rt = runtime();
    let tenants = ["tenant-A", "tenant-B", "tenant C"];
    let functions = ["f", "g"];
    let r = role(&m.endpoint);
    let mut config = ProptestConfig::with_cases(12);
    config.failure_persistence = None;
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..24))| {
        let clock = Arc::new(AtomicI64::new(sts::now_unix()));
        let c2 = clock.clone();
        let broker = Broker::with(host_keys("AKIDSILODAEMON", "secret"), Arc::new(move || c2.load(Ordering::SeqCst)));
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut identities: HashMap<String, String> = HashMap::new();
        for op in ops {
            match op {
                Op::Get(f, t) => {
                    // Three askers at once for the same VM binding.
                    let got: Vec<_> = rt.block_on(async {
                        let a = broker.credentials(functions[f], tenants[t], &r, Duration::from_secs(60));
                        let b = broker.credentials(functions[f], tenants[t], &r, Duration::from_secs(60));
                        let c = broker.credentials(functions[f], tenants[t], &r, Duration::from_secs(60));
                        let (a, b, c) = tokio::join!(a, b, c);
                        vec![a.unwrap(), b.unwrap(), c.unwrap()]
                    });
                    for c in got {
                        prop_assert_eq!(&c.tenant, tenants[t]);
                        let key = c.issued.access_key_id.clone();
                        // From the cache: at least five minutes left on the
                        // broker's clock (fresh ones expire by moto's real
                        // clock, which this test's does not move).
                        if owner.contains_key(&key) {
                            prop_assert!(c.issued.expiration_unix - clock.load(Ordering::SeqCst) >= 300);
                        }
                        let first = *owner.entry(key.clone()).or_insert(t);
                        prop_assert_eq!(first, t, "key {} went to {} and {}", key, tenants[first], tenants[t]);
                        if !identities.contains_key(&key) {
                            identities.insert(key.clone(), rt.block_on(whose(&m.endpoint, &c)));
                        }
                        prop_assert!(
                            identities[&key].ends_with(&format!("/{}", session_name(tenants[t]))),
                            "{} is {}", tenants[t], identities[&key]
                        );
                    }
                }
                Op::Advance(s) => { clock.fetch_add(s, Ordering::SeqCst); }
                Op::Forget(f) => broker.forget_function(functions[f]),
            }
        }
    });
}

/// STS down: a clear error naming the endpoint, counted by reason; the
/// broker goes on serving another function whose STS answers.
#[test]
fn sts_down_fails_clearly_and_other_functions_keep_their_credentials() {
    let m = moto("down", &[]);
    let rt = runtime();
    let broker = Broker::with(
        host_keys("AKIDSILODAEMON", "secret"),
        Arc::new(sts::now_unix),
    );
    let down = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let e = rt
        .block_on(broker.credentials("broken", "tenant-A", &role(&down), Duration::from_secs(60)))
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.reason(), "unreachable");
    let text = e.to_string();
    assert!(
        text.contains("unreachable") && text.contains(&down) && text.contains("\"tenant-A\""),
        "{text}"
    );
    let ok = rt
        .block_on(broker.credentials(
            "fine",
            "tenant-A",
            &role(&m.endpoint),
            Duration::from_secs(60),
        ))
        .unwrap();
    assert_eq!(ok.tenant, "tenant-A");
    let metrics = broker.render_metrics();
    assert!(
        metrics.contains(
            "silo_tenant_credentials_failures_total{function=\"broken\",reason=\"unreachable\"} 1"
        ),
        "{metrics}"
    );
}

/// A role the daemon's identity may not assume: moto (IAM authorization
/// on) refuses with AccessDenied; the error carries STS's code.
#[test]
fn a_refused_role_gives_stss_reason() {
    let dir = std::env::temp_dir().join(format!("silo-moto-key-{}", std::process::id()));
    let keyfile = dir.with_extension("json");
    let m = moto("refused", &["--auth-user", keyfile.to_str().unwrap()]);
    let until = Instant::now() + Duration::from_secs(60);
    while !keyfile.exists() {
        assert!(Instant::now() < until, "moto's IAM user was not created");
        std::thread::sleep(Duration::from_millis(100));
    }
    let key: Value = serde_json::from_str(&std::fs::read_to_string(&keyfile).unwrap()).unwrap();
    let _ = std::fs::remove_file(&keyfile);
    let rt = runtime();
    let broker = Broker::with(
        host_keys(key["id"].as_str().unwrap(), key["secret"].as_str().unwrap()),
        Arc::new(sts::now_unix),
    );
    let e = rt
        .block_on(broker.credentials(
            "reports",
            "tenant-A",
            &role(&m.endpoint),
            Duration::from_secs(60),
        ))
        .unwrap_err();
    assert_eq!(e.reason(), "refused", "{e}");
    let text = e.to_string();
    assert!(
        text.contains("AccessDenied") && text.contains(ROLE),
        "{text}"
    );
    // moto received the request (and refused it).
    assert_eq!(recorded(&m).len(), 1);
}

/// A long-lived tenant's credentials are renewed ahead of expiry, in the
/// background: the ask that finds them near expiry still gets valid ones at
/// once, the next gets the renewed ones; no ask fails or waits on STS.
/// Also measures a cache hit (the figure: printed, not asserted).
#[test]
fn credentials_are_renewed_ahead_without_a_failed_ask() {
    let m = moto("renew", &[]);
    let rt = runtime();
    let clock = Arc::new(AtomicI64::new(sts::now_unix()));
    let c2 = clock.clone();
    let broker = Broker::with(
        host_keys("AKIDSILODAEMON", "secret"),
        Arc::new(move || c2.load(Ordering::SeqCst)),
    );
    let r = role(&m.endpoint);
    let ask = || {
        rt.block_on(broker.credentials("long", "tenant-A", &r, Duration::from_secs(60)))
            .unwrap()
    };
    let first = ask();
    let started = Instant::now();
    let n = 1000;
    for _ in 0..n {
        assert_eq!(ask().issued, first.issued);
    }
    eprintln!(
        "cache hit: {:?} per ask (host clock)",
        started.elapsed() / n
    );
    // 8 minutes before expiry: within twice the 5-minute floor.
    clock.store(first.issued.expiration_unix - 480, Ordering::SeqCst);
    let near = ask();
    assert_eq!(
        near.issued, first.issued,
        "handed out at once, not renewed inline"
    );
    let until = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let c = ask();
        if c.issued != first.issued {
            break c;
        }
        assert!(Instant::now() < until, "never renewed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(renewed.tenant, "tenant-A");
    assert_eq!(recorded(&m).len(), 2);
    assert!(rt
        .block_on(whose(&m.endpoint, &renewed))
        .ends_with("/tenant-A"));
}
