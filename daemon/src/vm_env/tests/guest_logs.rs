//! Guest-controlled text in the daemon's log lines, under the production
//! formatter.

use super::*;
use crate::test_logs::{capture, LogBuf};

/// The formatter `silo serve` installs (`silo_benches::init_tracing`:
/// `tracing_subscriber::fmt()`'s default format, no colour off a
/// terminal), writing into `buf`.
fn production_formatter(buf: LogBuf) -> impl tracing::Subscriber {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(move || buf.clone())
        .with_ansi(false)
        .finish()
}

/// A guest's text that looks like a log line of another tenant.
const FORGED: &str = "x\n2026-12-07T10:00:00.000000Z  INFO silo_daemon::api: invocation answered \
                      tenant_id=\"B\" status=200\r\n";

/// A hostile guest answers with a result whose request id (100 KB) holds a
/// forged log line of tenant B, after writing another to its console: the
/// line the scheduler logs for the failed environment and the ones the
/// environment logs as it ends are one line each under the production
/// formatter, and the guest's text in them is escaped and at most 1 KiB.
#[tokio::test]
async fn a_hostile_guest_cannot_forge_a_log_line() {
    let buf = LogBuf::default();
    // Sibling tests reach the same log lines on their own threads.
    let _log = capture(production_formatter(buf.clone()));
    let (mut env, mut guest, _pid) = fake_vm().await;
    env.label = VmLabel {
        function: "f".into(),
        tenant_id: Some("tenant-a".into()),
    };
    let (console, mut console_in) = tokio::io::duplex(64 * 1024);
    env.console = Console::start(Some(console), None::<tokio::io::Empty>, 4096);
    tokio::io::AsyncWriteExt::write_all(&mut console_in, format!("booted\n{FORGED}").as_bytes())
        .await
        .unwrap();
    drop(console_in);
    let agent = tokio::spawn(async move {
        let _invoke = read_message(&mut guest).await.unwrap();
        let request_id = format!("{FORGED}{}", "y".repeat(100_000));
        let result = Message::Result {
            request_id,
            outcome: silo_proto::Outcome::Ok(b"{}".to_vec()),
        };
        write_message(&mut guest, &result).await.unwrap();
        guest
    });
    let r = env
        .invoke(invoke_msg(b"{}".to_vec()), Duration::from_secs(10))
        .await;
    let _guest = agent.await.unwrap();
    let err = match r {
        Err(e @ EnvError::Protocol(_)) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    let msg = err.to_string();
    assert!(
        msg.len() <= GUEST_TEXT_MAX + 64,
        "{} bytes of guest text in an error",
        msg.len()
    );
    // As the scheduler logs a failed environment (scheduler/src/lib.rs).
    tracing::warn!(function = "f", tenant_id = ?"tenant-a", env_id = 1, error = %err, "environment failed; destroying it");
    env.shutdown().await;
    let out = buf.text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "three events, three lines (the failure, the console size, the console tail):\n{out}"
    );
    for line in &lines {
        assert!(line.contains("tenant_id=\"tenant-a\""), "{line}");
        assert!(!line.contains('\r'), "{line}");
    }
    assert!(
        lines[0].contains(r#"result for unknown request "x\n2026-12-07"#),
        "{}",
        lines[0]
    );
    assert!(lines[2].contains(r#"console_tail="#), "{}", lines[2]);
    assert!(
        lines[2].contains(r#"tenant_id=\"B\" status=200"#),
        "{}",
        lines[2]
    );
    assert!(lines[2].len() < GUEST_TEXT_MAX + 512, "{}", lines[2]);
}
