//! Running commands from tests: a command that must succeed, the `silo`
//! CLI signing with a key, and a client signing for any endpoint.

use std::process::{Command, Output};

use silo_client::{Credentials, LambdaClient};

/// Runs `cmd` and asserts that it exited successfully (showing its stderr
/// if not); its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `silo` CLI under test, against `endpoint`, signing with `key`.
pub fn silo_signed(endpoint: &str, key: (&str, &str)) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_silo"));
    cmd.env("SILO_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", key.0)
        .env("AWS_SECRET_ACCESS_KEY", key.1);
    cmd
}

/// A client of `endpoint` signing with `key` (which need not be the
/// address it signs for: HAProxy passes every header through).
pub fn signed_client(endpoint: &str, key: (&str, &str)) -> LambdaClient {
    LambdaClient::new(
        endpoint,
        Some(Credentials {
            access_key: key.0.into(),
            secret: key.1.into(),
        }),
    )
}
