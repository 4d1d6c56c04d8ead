//! `silo create-function`, `silo invoke` and `silo burst`: small clients of
//! a running daemon (any AWS SDK or CLI works too). Requests are signed when
//! `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` are set.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;

use silo_client::{Credentials, HttpResponse, InvokeOptions, LambdaClient};

/// Where the daemon is and who we are.
#[derive(clap::Args, Debug)]
pub struct Connection {
    /// The daemon's URL.
    #[arg(long, env = "SILO_ENDPOINT", default_value = "http://127.0.0.1:9000")]
    endpoint: String,
    /// Access key id (signs requests with SigV4 when set with the secret).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    access_key_id: Option<String>,
    /// Secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_access_key: Option<String>,
}

impl Connection {
    pub(crate) fn client(&self) -> LambdaClient {
        let creds = match (&self.access_key_id, &self.secret_access_key) {
            (Some(a), Some(s)) => Some(Credentials {
                access_key: a.clone(),
                secret: s.clone(),
            }),
            _ => None,
        };
        LambdaClient::new(&self.endpoint, creds)
    }
}

/// Flags for `silo create-function`.
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Function name.
    #[arg(long)]
    name: String,
    /// A zip package with a `bootstrap` at its root.
    #[arg(
        long,
        conflicts_with = "bootstrap",
        required_unless_present = "bootstrap"
    )]
    zip: Option<PathBuf>,
    /// A single executable to package as `bootstrap`.
    #[arg(long)]
    bootstrap: Option<PathBuf>,
    /// Give each tenant its own execution environments (PER_TENANT).
    #[arg(long)]
    per_tenant: bool,
    /// Memory in MB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// Timeout in seconds.
    #[arg(long, default_value_t = 3)]
    timeout: u32,
    #[command(flatten)]
    conn: Connection,
}

/// Flags for `silo invoke`.
#[derive(clap::Args, Debug)]
pub struct InvokeArgs {
    /// Function name.
    #[arg(long)]
    name: String,
    /// Tenant id (X-Amz-Tenant-Id).
    #[arg(long)]
    tenant: Option<String>,
    /// JSON payload.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// RequestResponse, Event or DryRun.
    #[arg(long = "type")]
    invocation_type: Option<String>,
    /// Print the last 4 KB of the invocation's log to stderr.
    #[arg(long)]
    log_tail: bool,
    #[command(flatten)]
    conn: Connection,
}

fn finish(r: Result<HttpResponse, silo_client::ClientError>) -> ExitCode {
    match r {
        Ok(r) => {
            if let Some(t) = r.header("x-amz-log-result") {
                if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(t) {
                    eprint!("{}", String::from_utf8_lossy(&b));
                }
            }
            let _ = std::io::stdout().write_all(&r.body);
            println!();
            match (r.status, r.error_type(), r.header("x-amz-function-error")) {
                (200..=299, None, None) => ExitCode::SUCCESS,
                (s, Some(kind), _) => {
                    eprintln!("silo: HTTP {s} {kind}");
                    ExitCode::FAILURE
                }
                (s, None, Some(f)) => {
                    eprintln!("silo: HTTP {s}, function error ({f})");
                    ExitCode::FAILURE
                }
                (s, None, None) => {
                    eprintln!("silo: HTTP {s}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("silo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `silo create-function`.
pub fn create(args: CreateArgs) -> ExitCode {
    let zip = match (&args.zip, &args.bootstrap) {
        (Some(z), _) => std::fs::read(z).map_err(|e| format!("{}: {e}", z.display())),
        (None, Some(b)) => std::fs::read(b)
            .map(|code| silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &code)]))
            .map_err(|e| format!("{}: {e}", b.display())),
        (None, None) => Err("give --zip or --bootstrap".into()),
    };
    let zip = match zip {
        Ok(z) => z,
        Err(e) => {
            eprintln!("silo create-function: {e}");
            return ExitCode::FAILURE;
        }
    };
    let extra = serde_json::json!({ "MemorySize": args.memory, "Timeout": args.timeout });
    finish(
        args.conn
            .client()
            .create_function(&args.name, &zip, args.per_tenant, extra),
    )
}

/// Runs `silo invoke`.
pub fn invoke(args: InvokeArgs) -> ExitCode {
    let opts = InvokeOptions {
        tenant: args.tenant.clone(),
        invocation_type: args.invocation_type.clone(),
        log_tail: args.log_tail,
    };
    finish(
        args.conn
            .client()
            .invoke(&args.name, args.payload.as_bytes(), &opts),
    )
}

/// Flags for `silo burst`.
#[derive(clap::Args, Debug)]
pub struct BurstArgs {
    /// The function to invoke (the counter function, or any PER_TENANT
    /// function answering `{"tenant_id": ..., "count": ...}`).
    #[arg(long)]
    name: String,
    /// `TENANTSxINVOKES@IN_FLIGHT`: new tenants, invokes per tenant,
    /// invokes in flight at once.
    #[arg(long, default_value = "6x6@12")]
    shape: silo_client::burst::BurstShape,
    /// Tenant ids are `<prefix>-0`, `<prefix>-1`...
    #[arg(long, default_value = "burst")]
    prefix: String,
    #[command(flatten)]
    conn: Connection,
}

/// `silo burst`: a burst of new tenants against a running daemon; prints
/// the JSON report (every invoke's outcome, latencies, refusals, problems)
/// and exits 1 if any invoke failed or broke isolation.
pub fn burst(args: BurstArgs) -> ExitCode {
    let report = silo_client::burst::run(&args.conn.client(), &args.name, &args.prefix, args.shape);
    let v = report.to_json();
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    let (answered, refused, failed) = report.tally();
    eprintln!(
        "silo burst {}: {answered} answered, {refused} refused, {failed} failed in {:.1} s",
        args.shape,
        report.wall.as_secs_f64()
    );
    if report.violations().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
