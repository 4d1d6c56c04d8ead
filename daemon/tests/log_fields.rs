//! Tenant ids in logs are always quoted (docs/SECURITY.md, "What is
//! logged"): a tenant `a b=c` appears as `tenant_id="a b=c"`, never as
//! `tenant_id=a b=c`, which reads as a field `b` of another line's making.
//! Tenant ids are caller-chosen text, so every log field carrying one is
//! recorded with `?` (Debug: quoted and escaped), never `%` (Display: raw).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Fields named `tenant...` recorded with Display (`tenant_id = %x`,
/// `tenant = %x`, `%tenant`), in the daemon, the scheduler, the CLI and the
/// client.
fn displayed_tenant_fields() -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["daemon/src", "scheduler/src", "src", "client/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    let mut hits = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let bytes = line.as_bytes();
            for (i, _) in line.match_indices("tenant") {
                // `tenant_id = %...` / `tenant = %...`
                let rest = &line[i..];
                let name_end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let after = rest[name_end..].trim_start();
                let display = after
                    .strip_prefix('=')
                    .is_some_and(|v| v.trim_start().starts_with('%'));
                // `%tenant_id` shorthand.
                let shorthand = i > 0 && bytes[i - 1] == b'%';
                if display || shorthand {
                    hits.push(format!(
                        "{}:{}: {}",
                        f.strip_prefix(root()).unwrap_or(&f).display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    hits
}

#[test]
fn no_log_field_records_a_tenant_id_with_display() {
    let hits = displayed_tenant_fields();
    assert!(
        hits.is_empty(),
        "tenant ids logged with % (unquoted); use ?:\n{}",
        hits.join("\n")
    );
}

/// A writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The daemon's formatter (`silo_benches::init_tracing`: tracing-subscriber's
/// default `fmt` format, here without colour) prints a `?` field quoted and a
/// `%` field raw: why the rule above is the one that matters.
#[test]
fn the_production_formatter_quotes_debug_fields_only() {
    let out = Captured::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let tenant = "a b=c";
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(function = "f", tenant_id = ?tenant, "quoted");
        tracing::info!(function = "f", tenant_id = %tenant, "raw");
    });
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = |m: &str| text.lines().find(|l| l.contains(m)).unwrap().to_string();
    assert!(line("quoted").contains(r#"tenant_id="a b=c""#), "{text}");
    assert!(line("raw").contains("tenant_id=a b=c"), "{text}");
}
