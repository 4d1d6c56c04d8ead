//! Tenant-scoped credentials end to end, in the KVM test host (one boot):
//! `silo serve` with networking and a tenant role whose STS is `moto` (PyPI)
//! in server mode, started by this test on this machine (reached from the
//! test host and its guests at 10.0.2.2, QEMU's address for this machine;
//! `tests/moto/server.py` records the AssumeRole requests moto receives).
//!
//! A Python function with boto3 clients made at module level (the usual
//! Lambda pattern; boto3 vendored in its zip) calls
//! `sts.get_caller_identity()` and S3 `list_objects_v2` on
//! `bucket/<tenant>/`, and returns what it saw. Tenant A is served by a
//! pooled VM (whose init ran before any tenant was bound), tenant "B 2" by
//! a cold one: each sees an assumed-role session of its own; the AssumeRole
//! requests moto received were signed by the daemon's key and carry each
//! tenant's rendered policy, tag, source identity and session name. moto
//! does not evaluate session policies, so the listing is the function's
//! own prefix because it asked for it; what is proven about the policy is
//! what was requested. A function whose STS is down fails its invoke with
//! `TenantCredentialsException`, counted in `/metrics`, while the other
//! keeps serving.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{config, scratch, TestDaemon, ADMIN};
use serde_json::{json, Value};
use silo_client::{InvokeOptions, LambdaClient};
use silo_daemon::creds::session_name;

const HANDLER: &str = r#"
import os, boto3
from botocore.config import Config

# Module level: in a pooled VM this runs before any tenant is bound (the
# container-credentials endpoint then serves expired credentials that
# authorize nothing; botocore fetches again on first use).
MOTO = os.environ["MOTO"]
sts = boto3.client("sts", endpoint_url=MOTO, region_name="us-east-1")
s3 = boto3.client("s3", endpoint_url=MOTO, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}))

def handler(event, context):
    tenant = context.tenant_id
    ident = sts.get_caller_identity()
    listed = s3.list_objects_v2(Bucket="bucket", Prefix=tenant + "/")
    creds = sts._request_signer._credentials.get_frozen_credentials()
    return {
        "tenant": tenant,
        "arn": ident["Arn"],
        "keys": [o["Key"] for o in listed.get("Contents", [])],
        "access_key": creds.access_key,
        "env_key": "AWS_ACCESS_KEY_ID" in os.environ,
        "boot": open("/proc/sys/kernel/random/boot_id").read().strip(),
    }
"#;

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"arn:aws:s3:::bucket","Condition":{"StringLike":{"s3:prefix":["${tenant_id}/*"]}}},{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::bucket/${tenant_id}/*"}]}"#;
const ROLE: &str = "arn:aws:iam::123456789012:role/silo-tenant";
const TENANTS: [&str; 2] = ["tenant-A", "tenant B 2"];

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/moto")
        .join(name)
}

/// moto on 127.0.0.1:`port` recording into `record`.
fn start_moto(port: u16, record: &Path) -> Moto {
    let mut child = Command::new("python3")
        .arg(script("server.py"))
        .args(["127.0.0.1", &port.to_string()])
        .arg(record)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with moto[server] (.ci/run installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("moto listening"),
        "moto did not start: {line:?}"
    );
    Moto(child)
}

fn python(code: &str, args: &[&str]) -> String {
    let out = common::cli::run_ok(Command::new("python3").arg("-c").arg(code).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn invoke(c: &LambdaClient, function: &str, tenant: &str) -> silo_client::HttpResponse {
    c.invoke(
        function,
        b"{}",
        &InvokeOptions {
            tenant: Some(tenant.into()),
            ..Default::default()
        },
    )
    .expect("invoke")
}

fn invoke_ok(c: &LambdaClient, tenant: &str) -> (Value, bool) {
    let r = invoke(c, "whoami", tenant);
    assert_eq!(r.status, 200, "{tenant}: {}", r.text());
    assert!(
        r.header("x-amz-function-error").is_none(),
        "{tenant}: {}",
        r.text()
    );
    let pooled = r.header("x-silo-pooled") == Some("true");
    let v = r.json();
    eprintln!("{tenant} (pooled {pooled}): {v}");
    (v, pooled)
}

#[test]
fn each_tenant_gets_its_own_role_session_in_pooled_and_cold_vms() {
    if silo_images::testhost::hardware_kvm_usable() {
        // Guests reach this machine's moto through the test host's uplink
        // (10.0.2.2); on a hardware-KVM host daemon/tests/creds_moto.rs and
        // guest-agent/tests/container_credentials.rs cover the parts.
        eprintln!("this test runs in the KVM test host only: skipped");
        return;
    }
    let dir = scratch("creds-e2e");
    let port = common::daemon::free_port();
    let record = dir.join("assume_role.jsonl");
    let _moto = start_moto(port, &record);
    python(
        "import boto3, sys\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
             aws_access_key_id='seed', aws_secret_access_key='seed')\n\
         s3.create_bucket(Bucket='bucket')\n\
         for k in sys.argv[2:]: s3.put_object(Bucket='bucket', Key=k, Body=b'x')\n",
        &[
            &format!("http://127.0.0.1:{port}"),
            "tenant-A/a.txt",
            "tenant B 2/b.txt",
            "tenant-C/c.txt",
        ],
    );
    std::fs::write(dir.join("handler.py"), HANDLER).unwrap();
    let zip_path = dir.join("whoami.zip");
    python(
        &format!(
            "import runpy, sys; sys.argv = ['x'] + sys.argv[1:]; runpy.run_path({:?})",
            script("boto3_zip.py")
        ),
        &[
            dir.join("handler.py").to_str().unwrap(),
            zip_path.to_str().unwrap(),
        ],
    );
    let zip = std::fs::read(&zip_path).unwrap();
    std::fs::write(
        dir.join("daemon.env"),
        "export AWS_ACCESS_KEY_ID=AKIDSILODAEMON\nexport AWS_SECRET_ACCESS_KEY=daemon-secret\n",
    )
    .unwrap();
    let moto_url = format!("http://10.0.2.2:{port}");
    let dead_url = format!("http://10.0.2.2:{}", common::daemon::free_port());
    let cfg = config(&format!(
        "[network]\nenabled = true\ndns = []\nslots = 6\nready_slots = 2\n\n\
         [network.functions]\n\"whoami\" = {{ allow = [\"10.0.2.2/32:{port}\"] }}\n\
         \"broken\" = {{ allow = [\"10.0.2.2/32:{port}\"] }}\n\n\
         [tenant_roles.whoami]\nrole_arn = \"{ROLE}\"\nsts_endpoint = \"{moto_url}\"\n\
         duration_seconds = 3600\nsession_policy = '{POLICY}'\n\n\
         [tenant_roles.broken]\nrole_arn = \"{ROLE}\"\nsts_endpoint = \"{dead_url}\"\n\
         session_policy = '{POLICY}'\n"
    ));
    let files = vec![(dir.join("daemon.env"), "/work/daemon.env".to_string())];
    let d = TestDaemon::with_runtime_opts("python3.11", &cfg, "pmem", files, true);
    let started = Instant::now();
    let logs = d.run_scenario(|d| {
        let admin = d.client(ADMIN);
        for f in ["whoami", "broken"] {
            let r = admin
                .create_function(
                    f,
                    &zip,
                    true,
                    json!({"Runtime": "python3.11", "Handler": "lambda_function.handler",
                           "Timeout": 300, "MemorySize": 256,
                           "Environment": {"Variables": {"MOTO": moto_url}}}),
                )
                .unwrap();
            assert_eq!(r.status, 201, "{}", r.text());
        }
        // A pooled VM: its init (the module-level clients) runs unbound.
        let r = admin
            .request(
                "PUT",
                "/2015-03-31/functions/whoami/pool",
                &[],
                br#"{"PoolSize":1}"#,
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let until = Instant::now() + Duration::from_secs(900);
        loop {
            let r = admin
                .request("GET", "/2015-03-31/functions/whoami/pool", &[], b"")
                .unwrap();
            if r.json()["Ready"] == 1 {
                break;
            }
            assert!(
                Instant::now() < until,
                "the pool never got ready: {}",
                r.text()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
        let (a, a_pooled) = invoke_ok(&admin, TENANTS[0]);
        assert!(a_pooled, "tenant A was not served by the pooled VM");
        // No pool from here on: tenant B's VM boots cold (and fetches its
        // credentials while it boots).
        let r = admin
            .request(
                "PUT",
                "/2015-03-31/functions/whoami/pool",
                &[],
                br#"{"PoolSize":0}"#,
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let (b, b_pooled) = invoke_ok(&admin, TENANTS[1]);
        assert!(!b_pooled, "tenant B was served by a pooled VM");
        assert_ne!(a["boot"], b["boot"]);
        for (v, t) in [(&a, TENANTS[0]), (&b, TENANTS[1])] {
            assert_eq!(v["tenant"], t);
            assert_eq!(
                v["arn"],
                format!(
                    "arn:aws:sts::123456789012:assumed-role/silo-tenant/{}",
                    session_name(t)
                ),
                "{v}"
            );
            assert_eq!(
                v["keys"],
                json!([format!(
                    "{t}/{}.txt",
                    if t == TENANTS[0] { "a" } else { "b" }
                )])
            );
            assert_eq!(v["env_key"], false, "{v}");
            assert!(v["access_key"].as_str().unwrap().starts_with("ASIA"), "{v}");
        }
        assert_ne!(a["access_key"], b["access_key"]);
        // A's warm VM again: the same (cached) session.
        let (a2, _) = invoke_ok(&admin, TENANTS[0]);
        assert_eq!(
            (&a2["boot"], &a2["access_key"]),
            (&a["boot"], &a["access_key"])
        );

        // What moto received: one AssumeRole per tenant, signed by the
        // daemon's key, each with its own tenant's policy and tag.
        let calls: Vec<Value> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for t in TENANTS {
            let mine: Vec<&Value> = calls
                .iter()
                .filter(|c| c["form"]["Tags.member.1.Value"] == t)
                .collect();
            assert_eq!(mine.len(), 1, "{t}: {calls:#?}");
            let form = &mine[0]["form"];
            assert_eq!(mine[0]["signer"], "AKIDSILODAEMON");
            assert_eq!(form["Tags.member.1.Key"], "tenant_id");
            assert_eq!(form["RoleArn"], ROLE);
            assert_eq!(form["RoleSessionName"], session_name(t).as_str());
            assert_eq!(form["SourceIdentity"], session_name(t).as_str());
            let policy: Value = serde_json::from_str(form["Policy"].as_str().unwrap()).unwrap();
            assert_eq!(
                policy["Statement"][1]["Resource"],
                format!("arn:aws:s3:::bucket/{t}/*")
            );
            assert_eq!(
                policy["Statement"][0]["Condition"]["StringLike"]["s3:prefix"][0],
                format!("{t}/*")
            );
        }

        // STS down for one function: a clear error type, counted; the
        // other function keeps serving.
        let r = invoke(&admin, "broken", TENANTS[0]);
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(
            r.header("x-amzn-errortype"),
            Some("TenantCredentialsException"),
            "{}",
            r.text()
        );
        assert!(r.text().contains("unreachable"), "{}", r.text());
        let (a3, _) = invoke_ok(&admin, TENANTS[0]);
        assert_eq!(a3["access_key"], a["access_key"]);
        let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
        let failures = common::metric(
            &m,
            "silo_tenant_credentials_failures_total{function=\"broken\",reason=\"unreachable\"}",
        );
        assert!(failures.is_some_and(|n| n >= 1.0), "{m}");
        // One per tenant: an hour's sessions are not renewed within the
        // test (renewal starts 12 minutes before expiry).
        let assumed = common::metric(
            &m,
            "silo_tenant_credentials_assumed_total{function=\"whoami\"}",
        );
        assert_eq!(assumed, Some(2.0), "{m}");
    });
    eprintln!("scenario took {:?}", started.elapsed());
    // The figures: AssumeRole's time against the boot it overlaps.
    for line in logs.lines().filter(|l| {
        l.contains("role assumed")
            || l.contains("microVM ready")
            || l.contains("first invocation answered")
    }) {
        eprintln!("{line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
