//! The agent's container-credentials endpoint with a real botocore: a
//! custom runtime (Python with the host's boto3) makes its STS client at
//! module level, before any tenant is bound, as Lambda functions do. It
//! loads the endpoint's unbound credentials (expired, authorizing nothing)
//! without failing; after the host sends the tenant's credentials, the same
//! client signs with them (botocore fetched again). The token is required;
//! `AWS_ACCESS_KEY_ID` is never set. The same with the AWS SDK for
//! JavaScript v3 (`@aws-sdk/client-sts`, from npm, cached under
//! `~/.cache/silo`), on this host's Node.js. The same with the AWS SDK for
//! JavaScript v3 (`@aws-sdk/client-sts`, from npm, cached under
//! `~/.cache/silo`), on this host's Node.js.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::{fresh_dir, now_unix_ms, ok_json, Fixture};
use silo_proto::{write_message, AgentConfig, Message, TenantCredentials};

const BOOTSTRAP: &str = r#"
import json, os, time, urllib.request, urllib.error
import boto3
# Module level, during init: no tenant is bound yet.
sts = boto3.client("sts", region_name="us-east-1")
# What it loaded (the raw field: reading `access_key` would refresh).
at_init = sts._request_signer._credentials._access_key
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        r.read()
    now = sts._request_signer._credentials.get_frozen_credentials()
    uri = os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]
    try:
        urllib.request.urlopen(uri)
        no_token = "served"
    except urllib.error.HTTPError as e:
        no_token = e.code
    # Fetches as the SDKs make them, a connection each (the figures:
    # printed, not asserted).
    req = urllib.request.Request(uri, headers={"Authorization": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]})
    times = []
    for _ in range(21):
        t0 = time.perf_counter()
        urllib.request.urlopen(req).read()
        times.append((time.perf_counter() - t0) * 1e3)
    fetch_ms = {"first": times[0], "median": sorted(times)[10]}
    out = {"at_init": at_init, "now": now.access_key, "token": now.token, "fetch_ms": fetch_ms,
           "no_token": no_token, "env_key": "AWS_ACCESS_KEY_ID" in os.environ, "uri": uri}
    urllib.request.urlopen(urllib.request.Request(api + rid + "/response", data=json.dumps(out).encode(), method="POST")).read()
"#;

fn python_with_boto3() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys, boto3; print(sys.executable)"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "boto3 is not installed for python3 (.ci/run installs it)"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_module_level_client_gets_the_tenants_credentials_after_binding() {
    let dir = fresh_dir("agent-creds", "boto3");
    let bootstrap = dir.join("task/bootstrap");
    std::fs::write(
        &bootstrap,
        format!("#!{}\n{BOOTSTRAP}", python_with_boto3()),
    )
    .unwrap();
    bound_after_init(dir, Default::default());
}

/// The JavaScript SDK's version, pinned.
const JS_SDK: &str = "3.1178.0";

const JS_BOOTSTRAP: &str = r#"
const { STSClient } = require("@aws-sdk/client-sts");
// Module level, during init: no tenant is bound yet.
const sts = new STSClient({ region: "us-east-1" });
const api = `http://${process.env.AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/`;
(async () => {
  // An init that already resolves credentials (say, to read its config).
  const atInit = await sts.config.credentials();
  for (;;) {
    const r = await fetch(api + "next");
    const id = r.headers.get("lambda-runtime-aws-request-id");
    await r.text();
    const now = await sts.config.credentials();
    let noToken;
    try { noToken = (await fetch(process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI)).status; } catch (e) { noToken = String(e); }
    const out = { at_init: atInit.accessKeyId, now: now.accessKeyId, token: now.sessionToken,
                  no_token: noToken, env_key: "AWS_ACCESS_KEY_ID" in process.env,
                  uri: process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI };
    await fetch(api + id + "/response", { method: "POST", body: JSON.stringify(out) });
  }
})();
"#;

/// `@aws-sdk/client-sts` installed (once) under `~/.cache/silo`.
fn js_sdk() -> std::path::PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    let dir = std::path::PathBuf::from(home).join(format!(".cache/silo/aws-sdk-js-{JS_SDK}"));
    if !dir.join("node_modules/@aws-sdk/client-sts").is_dir() {
        let ok = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(format!("@aws-sdk/client-sts@{JS_SDK}"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "npm install @aws-sdk/client-sts@{JS_SDK} failed");
    }
    dir.join("node_modules")
}

#[test]
fn the_javascript_sdk_gets_the_tenants_credentials_after_binding() {
    let node = Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .expect("sh");
    let node = String::from_utf8(node.stdout).unwrap().trim().to_string();
    assert!(!node.is_empty(), "no node on this host");
    let modules = js_sdk();
    let dir = fresh_dir("agent-creds", "js");
    let bootstrap = dir.join("task/bootstrap");
    std::fs::write(&bootstrap, format!("#!{node}\n{JS_BOOTSTRAP}")).unwrap();
    let env = [("NODE_PATH".to_string(), modules.display().to_string())].into();
    bound_after_init(dir, env);
}

/// Runs `dir/task/bootstrap` as a custom runtime with a tenant role: init
/// unbound (AwaitInit), then tenant A's credentials and an invoke; checks
/// what the runtime's SDK client saw.
fn bound_after_init(
    dir: std::path::PathBuf,
    environment: std::collections::BTreeMap<String, String>,
) {
    let bootstrap = dir.join("task/bootstrap");
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = AgentConfig {
        function_name: "creds".into(),
        timeout_s: 60,
        task_root: dir.join("task").display().to_string(),
        container_credentials: true,
        environment,
        ..AgentConfig::default()
    };
    let (mut f, hello) = Fixture::start(dir, &config, None, Duration::from_secs(120));
    assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
    // As for a pooled VM: the runtime's init runs to its first `next`
    // before any tenant is bound.
    write_message(&mut f.conn, &Message::AwaitInit).unwrap();
    assert_eq!(f.next_non_log(), Message::InitDone { error: None });
    write_message(
        &mut f.conn,
        &Message::Credentials(TenantCredentials {
            access_key_id: "ASIATENANTA000000001".into(),
            secret_access_key: "secret-a".into(),
            token: "token-a".into(),
            expiration: "2099-01-01T00:00:00Z".into(),
        }),
    )
    .unwrap();
    let (o, _) = f.invoke("tenant-A", "{}", now_unix_ms() + 60_000);
    let v = ok_json(&o);
    if let Some(ms) = v.get("fetch_ms") {
        eprintln!("credentials fetches from the agent's endpoint (ms): {ms}");
    }
    assert_eq!(v["at_init"], "ASIASILOUNBOUNDVM000", "{v}");
    assert_eq!(v["now"], "ASIATENANTA000000001", "{v}");
    assert_eq!(v["token"], "token-a", "{v}");
    assert_eq!(v["no_token"], 403, "{v}");
    assert_eq!(v["env_key"], false, "{v}");
    assert!(
        v["uri"].as_str().unwrap().starts_with("http://127.0.0.1:"),
        "{v}"
    );
}
