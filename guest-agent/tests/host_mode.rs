//! The agent in host mode against a function built on the official
//! `lambda_runtime` crate (functions/counter): a runtime client we did not
//! write. The test plays the host over a real Unix socket with silo-proto.

mod common;

use std::time::Duration;

use common::{fresh_dir, now_unix_ms, ok_json, Fixture};
use silo_proto::{write_message, AgentConfig, Message, Outcome};

/// [`start_with`] the counter as its own `bootstrap`.
fn start(name: &str, timeout_s: u32) -> (Fixture, Message) {
    start_with(name, timeout_s, None)
}

/// The agent with the counter function as `task/counter`, and as its
/// `bootstrap` unless a shell `script` is given for that.
fn start_with(name: &str, timeout_s: u32, script: Option<&str>) -> (Fixture, Message) {
    let function = silo_images::artifacts::counter_function().expect("build the counter function");
    let dir = fresh_dir("agent", name);
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::copy(&function, dir.join("task/counter")).unwrap();
    match script {
        None => {
            std::fs::copy(&function, dir.join("task/bootstrap")).unwrap();
        }
        Some(text) => {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join("task/bootstrap");
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let mut config = AgentConfig {
        function_name: "counter".into(),
        timeout_s,
        task_root: dir.join("task").display().to_string(),
        ..AgentConfig::default()
    };
    config
        .environment
        .insert("TMPDIR".into(), dir.join("tmp").display().to_string());
    Fixture::start(dir, &config, None, Duration::from_secs(60))
}

/// An invoke whose host-side deadline is `budget_ms` from now: its
/// outcome and log lines ([`invoke_with_clock_skew`]).
fn invoke(f: &mut Fixture, tenant: &str, payload: &str, budget_ms: u64) -> (Outcome, Vec<String>) {
    invoke_with_clock_skew(f, tenant, payload, budget_ms as i64)
}

/// An invoke whose host-side deadline is `deadline_offset_ms` from this
/// machine's wall clock (negative: as from a host whose clock is behind the
/// guest's by more than the timeout).
fn invoke_with_clock_skew(
    f: &mut Fixture,
    tenant: &str,
    payload: &str,
    deadline_offset_ms: i64,
) -> (Outcome, Vec<String>) {
    let deadline = (now_unix_ms() as i64 + deadline_offset_ms) as u64;
    let id = format!("req-{}", deadline);
    let mut logs = Vec::new();
    let outcome = f.invoke_with(&id, tenant, payload, deadline, |tenant_id, line| {
        // Lines are tagged with the tenant whose invocation was in flight
        // when the function wrote them; a line of the previous invocation
        // may trail its result, so it can carry that invocation's tenant
        // (never a tenant this environment did not serve: see the tests
        // below).
        if !line.starts_with("[silo]") {
            assert!(tenant_id.is_some(), "log line without a tenant: {line}");
            if tenant_id.as_deref() != Some(tenant) {
                logs.push(format!(
                    "[earlier:{}] {line}",
                    tenant_id.unwrap_or_default()
                ));
                return;
            }
        }
        logs.push(line);
    });
    (outcome, logs)
}

/// The error type of a failed invocation; panics on a success.
fn err_type(o: &Outcome) -> String {
    match o {
        Outcome::Err(e) => e.error_type.clone(),
        Outcome::Ok(b) => panic!("expected an error, got {}", String::from_utf8_lossy(b)),
    }
}

#[test]
fn hello_then_invocations_see_tenant_and_keep_state() {
    let (mut f, hello) = start("state", 5);
    assert!(matches!(hello, Message::Hello { .. }));
    let (o, logs) = invoke(&mut f, "tenant-A", "{}", 5000);
    let v = ok_json(&o);
    assert_eq!(
        v["tenant_id"], "tenant-A",
        "the function sees its tenant id"
    );
    assert_eq!(v["count"], 1);
    let (o2, logs2) = invoke(&mut f, "tenant-A", "{}", 5000);
    let all: Vec<&String> = logs.iter().chain(&logs2).collect();
    for l in all.iter().filter(|l| l.contains("count")) {
        assert!(
            !l.starts_with("[earlier"),
            "a line of tenant-A's own invocations: {l}"
        );
    }
    assert!(
        all.iter().any(|l| l.contains("count 1")),
        "function stdout forwarded: {all:?}"
    );
    let v = ok_json(&o2);
    assert_eq!(
        (v["count"].as_u64(), v["in_memory_count"].as_u64()),
        (Some(2), Some(2))
    );
    // One environment, one tenant: another tenant is refused, and any line
    // arriving meanwhile belongs to tenant-A's earlier invocation.
    let (o3, logs3) = invoke(&mut f, "tenant-B", "{}", 5000);
    assert_eq!(err_type(&o3), "Silo.TenantMismatch");
    for l in logs3.iter().filter(|l| !l.starts_with("[silo]")) {
        assert!(l.starts_with("[earlier:tenant-A]"), "{l}");
    }
}

#[test]
fn the_timeout_runs_on_the_guests_clocks_whatever_the_hosts_wall_clock_says() {
    // Found by CI: a nested guest's wall clock seconds ahead of the host's
    // made every invoke time out at once (the host's absolute deadline had
    // already passed in guest time).
    let (mut f, _) = start("skew", 2);
    let (o, _) = invoke_with_clock_skew(&mut f, "t", "{}", -60_000);
    assert_eq!(ok_json(&o)["count"], 1, "{o:?}");
    // And a host deadline far in the future does not extend the timeout.
    let (o, _) = invoke_with_clock_skew(&mut f, "t", r#"{"action":"sleep","ms":60000}"#, 3_600_000);
    assert_eq!(err_type(&o), "Sandbox.Timedout");
}

#[test]
fn function_error_crash_and_timeout_are_reported_and_recovered() {
    let (mut f, _) = start("faults", 1);
    let (o, _) = invoke(&mut f, "t", r#"{"action":"fail"}"#, 5000);
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_message.contains("asked to fail")),
        "{o:?}"
    );
    let (o, _) = invoke(&mut f, "t", r#"{"action":"crash"}"#, 5000);
    assert_eq!(err_type(&o), "Runtime.ExitError");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_message.contains("exit status 7")),
        "{o:?}"
    );
    // The runtime restarts; /tmp survived, memory did not.
    let v = ok_json(&invoke(&mut f, "t", "{}", 5000).0);
    assert_eq!(
        (v["count"].as_u64(), v["in_memory_count"].as_u64()),
        (Some(1), Some(1))
    );
    let (o, _) = invoke(&mut f, "t", r#"{"action":"sleep","ms":60000}"#, 1000);
    assert_eq!(err_type(&o), "Sandbox.Timedout");
    let v = ok_json(&invoke(&mut f, "t", "{}", 5000).0);
    assert_eq!(v["count"], 2);
}

#[test]
fn flooding_stdout_is_bounded_and_results_still_arrive() {
    let (mut f, _) = start("flood", 30);
    let (o, logs) = invoke(&mut f, "t", r#"{"action":"flood","lines":200000}"#, 30000);
    let v = ok_json(&o);
    assert_eq!(v["count"], 1);
    assert!(logs.len() < 200_000, "lines were dropped, not all buffered");
    let v = ok_json(&invoke(&mut f, "t", "{}", 5000).0);
    assert_eq!(v["count"], 2);
}

/// The host's `AwaitInit` (a pre-booted environment) is answered once the
/// runtime's init is over: here after the bootstrap wrote `init-done`, just
/// before it started the runtime that asks for its first invocation. The
/// environment then serves its first invocation as usual.
#[test]
fn await_init_answers_once_the_runtime_asks_for_its_first_invocation() {
    let (mut f, _) = start_with(
        "await-init",
        30,
        Some("#!/bin/sh\nsleep 1\n: > init-done\nexec ./counter\n"),
    );
    write_message(&mut f.conn, &Message::AwaitInit).unwrap();
    let done = f.next_non_log();
    assert_eq!(done, Message::InitDone { error: None });
    assert!(
        f.dir.join("task/init-done").exists(),
        "answered before the init was over"
    );
    let (o, _) = invoke(&mut f, "tenant-A", "{}", 5000);
    assert_eq!(ok_json(&o)["count"], 1, "{o:?}");
}

/// A runtime that exits during its init fails `AwaitInit` with Lambda's
/// `Runtime.ExitError`: such an environment never enters a pool.
#[test]
fn await_init_reports_a_runtime_that_exits_during_init() {
    let (mut f, _) = start_with(
        "await-init-exit",
        30,
        Some("#!/bin/sh\necho cannot start >&2\nexit 3\n"),
    );
    write_message(&mut f.conn, &Message::AwaitInit).unwrap();
    let done = f.next_non_log();
    let Message::InitDone { error: Some(e) } = done else {
        panic!("expected an init failure, got {done:?}");
    };
    assert_eq!(e.error_type, "Runtime.ExitError", "{e:?}");
    assert!(e.error_message.contains('3'), "{e:?}");
}

/// `silo.dns=` on the kernel command line becomes the resolver
/// configuration before the agent says hello (so before any runtime
/// starts); as PID 1 the agent reads /proc/cmdline and writes
/// /etc/resolv.conf, here the files given in host mode.
#[test]
fn resolvers_from_the_kernel_command_line_are_written_before_hello() {
    let dir = fresh_dir("agent", "dns");
    let cmdline = dir.join("cmdline");
    let resolv = dir.join("etc/resolv.conf");
    std::fs::write(
        &cmdline,
        "console=ttyS0 ip=169.254.0.2::169.254.0.1:255.255.255.252::eth0:off silo.dns=192.0.2.53,198.51.100.53\n",
    )
    .unwrap();
    let config = AgentConfig {
        function_name: "dns".into(),
        task_root: dir.join("task").display().to_string(),
        ..AgentConfig::default()
    };
    let extra = [
        "--kernel-cmdline".into(),
        cmdline.clone().into_os_string(),
        "--resolv-conf".into(),
        resolv.clone().into_os_string(),
    ];
    let (_f, hello) = common::Fixture::start_with_args(
        dir.clone(),
        &config,
        None,
        Duration::from_secs(60),
        &extra,
    );
    assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 192.0.2.53\nnameserver 198.51.100.53\n"
    );
}
