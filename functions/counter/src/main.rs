//! The demo function from the Lambda tenant isolation launch post: it counts
//! how many times it ran in `/tmp` of its execution environment.
//!
//! Under tenant isolation, each tenant sees its own count: tenant-A's second
//! call answers 2, tenant-B's first call answers 1.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

static IN_MEMORY: AtomicU64 = AtomicU64::new(0);
/// The counter lives in the environment's temporary directory (`/tmp`).
fn counter_file() -> std::path::PathBuf {
    std::env::temp_dir().join("silo-counter")
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    match payload.get("action").and_then(Value::as_str) {
        Some("crash") => std::process::exit(7),
        Some("fail") => return Err("asked to fail".into()),
        Some("flood") => {
            let lines = payload.get("lines").and_then(Value::as_u64).unwrap_or(100_000);
            for i in 0..lines {
                println!("flood line {i} ........................................................");
            }
        }
        Some("sleep") => {
            let ms = payload.get("ms").and_then(Value::as_u64).unwrap_or(1000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    let previous: u64 = std::fs::read_to_string(counter_file())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let count = previous + 1;
    std::fs::write(counter_file(), count.to_string())?;
    let in_memory = IN_MEMORY.fetch_add(1, Ordering::SeqCst) + 1;
    println!("tenant {:?} count {count}", ctx.tenant_id);
    Ok(json!({
        "tenant_id": ctx.tenant_id,
        "count": count,
        "in_memory_count": in_memory,
        "request_id": ctx.request_id,
        "pid": std::process::id(),
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
