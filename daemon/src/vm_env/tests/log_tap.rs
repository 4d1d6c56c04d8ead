//! The log tap of an environment, over a fake agent: every line and the
//! platform records reach the store with the daemon's tenant and request
//! id, REPORT carries the invoke's own duration, and Init Duration is on
//! the cold start's REPORT only.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use silo_proto::asynchronous::{read_message, write_message};
use silo_proto::{LogStream, Message, Outcome};

use super::{fake_vm, invoke_msg, test_dir};
use crate::logs::pattern::Pattern;
use crate::logs::query::{self, EventQuery, Scope};
use crate::logs::sink::{self, Export, PipelineSettings};
use crate::logs::store::Bounds;
use crate::logs::{LogFormat, LogTap, LoggingConfig, UsageBook};

fn all_events(root: &std::path::Path, scope: &Scope) -> Vec<query::Found> {
    query::events(
        root,
        &EventQuery {
            function: "f",
            scope,
            streams: &[],
            stream_prefix: "",
            start_ms: None,
            end_ms: None,
            pattern: &Pattern::All,
            limit: 10_000,
            after: None,
        },
    )
    .0
}

#[tokio::test]
async fn lines_and_platform_records_reach_the_store_with_the_daemons_tenant() {
    let root = test_dir().join("logs");
    let sink = sink::start(
        PipelineSettings {
            root: root.clone(),
            buffer_events: 1024,
            buffer_bytes: 1 << 20,
            bounds: Bounds {
                max_function_bytes: 1 << 20,
                max_tenant_bytes: 1 << 20,
            },
            export: Export::Off,
            linger: crate::logs::sink::LINGER,
        },
        Arc::new(UsageBook::open(root.clone())),
    )
    .unwrap();
    let (mut env, mut guest, _pid) = fake_vm().await;
    let cfg = LoggingConfig {
        format: LogFormat::Json,
        ..LoggingConfig::default()
    };
    env.set_log_tap(LogTap::new(sink, "f", "python3.11", 128, cfg));
    let agent = tokio::spawn(async move {
        for _ in 0..2 {
            let Message::Invoke { request_id, .. } = read_message(&mut guest).await.unwrap() else {
                panic!("not an invoke")
            };
            for (stream, line) in [
                (LogStream::Stdout, "printed line".to_string()),
                (
                    LogStream::Stderr,
                    r#"{"level":"INFO","message":"logged","tenantId":"tenant-b"}"#.to_string(),
                ),
                (
                    LogStream::Stderr,
                    r#"{"level":"DEBUG","message":"quiet"}"#.to_string(),
                ),
                (LogStream::Agent, "[silo] runtime init: ok".to_string()),
                (LogStream::Agent, "agent chatter".to_string()),
            ] {
                write_message(
                    &mut guest,
                    &Message::Log {
                        request_id: Some("guest-claim".into()),
                        tenant_id: Some("tenant-b".into()),
                        stream,
                        line,
                    },
                )
                .await
                .unwrap();
            }
            write_message(
                &mut guest,
                &Message::Result {
                    request_id,
                    outcome: Outcome::Ok(b"{}".to_vec()),
                },
            )
            .await
            .unwrap();
        }
        guest
    });
    let first = env
        .invoke(invoke_msg(b"{}".to_vec()), Duration::from_secs(3))
        .await
        .unwrap();
    let second = env
        .invoke(invoke_msg(b"{}".to_vec()), Duration::from_secs(3))
        .await
        .unwrap();
    let _guest = agent.await.unwrap();
    // 2 x (START, 3 kept lines, END, REPORT) and one INIT_START.
    let want = 13;
    let mut found = Vec::new();
    for _ in 0..100 {
        found = all_events(&root, &Scope::All);
        if found.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records: Vec<Value> = found
        .iter()
        .map(|f| serde_json::from_str(&f.event.m).unwrap())
        .collect();
    assert_eq!(records.len(), want, "{records:#?}");
    let stream = env.log_stream().unwrap().to_string();
    for (f, r) in found.iter().zip(&records) {
        assert_eq!(r["tenantId"], "tenant-a", "{r}");
        assert_eq!(f.event.n.as_deref(), Some("tenant-a"));
        assert_eq!(f.event.s, stream);
    }
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().or(r["message"].as_str()).unwrap_or("?"))
        .collect();
    // REPORT is written after the invoke answered, yet in its place: the
    // next invocation's START follows it.
    assert_eq!(
        kinds,
        [
            "platform.initStart",
            "platform.start",
            "printed line",
            "logged",
            "silo.agent",
            "platform.runtimeDone",
            "platform.report",
            "platform.start",
            "printed line",
            "logged",
            "silo.agent",
            "platform.runtimeDone",
            "platform.report"
        ],
        "{kinds:?}"
    );
    assert_eq!(records[2]["requestId"], "r-1", "the daemon's request id");
    let reports: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "platform.report")
        .collect();
    for (r, res) in reports.iter().zip([&first, &second]) {
        let ms = r["record"]["metrics"]["durationMs"].as_f64().unwrap();
        let own = res.duration.as_secs_f64() * 1e3;
        assert!((ms - own).abs() < 0.01, "REPORT {ms} ms, invoke {own} ms");
    }
    for r in &reports {
        // The VMM's (here the fake's) high-water mark, read from /proc.
        assert!(r["record"]["metrics"]["maxMemoryUsedMB"].is_number(), "{r}");
    }
    assert!(reports[0]["record"]["metrics"]["initDurationMs"].is_number());
    assert!(reports[1]["record"]["metrics"]
        .get("initDurationMs")
        .is_none());
    // Another tenant's scope opens nothing of tenant-a's.
    let other = Scope::Tenants(HashSet::from(["tenant-b".to_string()]));
    assert!(all_events(&root, &other).is_empty());
    env.shutdown().await;
}
