//! The demo function from the Lambda tenant isolation launch post: it counts
//! how many times it ran in `/tmp` of its execution environment.
//!
//! Under tenant isolation, each tenant sees its own count: tenant-A's second
//! call answers 2, tenant-B's first call answers 1.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

static IN_MEMORY: AtomicU64 = AtomicU64::new(0);
/// A random token of this runtime process, so of its execution environment
/// (the runtime lives as long as its microVM).
static ENVIRONMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn environment_token() -> &'static str {
    ENVIRONMENT.get_or_init(|| {
        use std::io::Read;
        let mut b = [0u8; 8];
        let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
        if random.is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            b = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}
/// The counter lives in the environment's temporary directory (`/tmp`).
fn counter_file() -> std::path::PathBuf {
    std::env::temp_dir().join("silo-counter")
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, ctx) = event.into_parts();
    // `"record": true`: the function's own record of every request it saw
    // (in its logs), first thing, so a line is there for every invocation
    // that ran, whatever ends it.
    if payload.get("record").and_then(Value::as_bool) == Some(true) {
        println!(
            "saw request {} tenant {} environment {}",
            ctx.request_id,
            ctx.tenant_id.as_deref().unwrap_or("-"),
            environment_token()
        );
    }
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
