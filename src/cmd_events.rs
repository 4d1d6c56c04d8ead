//! `silo events failed`: the Event invocations a running daemon gave up
//! (its own on-failure destination), listed or removed one by one.

use std::io::Write;
use std::process::ExitCode;

use crate::cmd_client::Connection;

/// Flags for `silo events`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    #[command(subcommand)]
    command: EventsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum EventsCommand {
    /// List failed events as JSON (payload, tenant, error, attempts), or
    /// remove one with --delete.
    Failed(FailedArgs),
}

/// Flags for `silo events failed`.
#[derive(clap::Args, Debug)]
struct FailedArgs {
    /// Only this function's failed events.
    #[arg(long)]
    function: Option<String>,
    /// Remove the failed event with this id instead of listing.
    #[arg(long)]
    delete: Option<i64>,
    #[command(flatten)]
    conn: Connection,
}

/// Runs `silo events`.
pub fn run(args: EventsArgs) -> ExitCode {
    let EventsCommand::Failed(a) = args.command;
    let client = a.conn.client();
    let r = match (a.delete, &a.function) {
        (Some(id), _) => client.request("DELETE", &format!("/silo/failed-events/{id}"), &[], b""),
        (None, Some(f)) => client.request(
            "GET",
            &format!("/silo/failed-events?FunctionName={f}"),
            &[],
            b"",
        ),
        (None, None) => client.request("GET", "/silo/failed-events", &[], b""),
    };
    match r {
        Ok(r) if (200..300).contains(&r.status) => {
            if !r.body.is_empty() {
                let pretty = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok());
                match pretty {
                    Some(p) => println!("{p}"),
                    None => {
                        let _ = std::io::stdout().write_all(&r.body);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("silo events: HTTP {} {}", r.status, r.text());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("silo events: {e}");
            ExitCode::FAILURE
        }
    }
}
