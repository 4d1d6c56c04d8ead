//! The test as the host of an agent in host mode: the agent runs as a child
//! process that connects to a Unix socket the test listens on, and the test
//! speaks silo-proto over that socket (Hello, Invoke, Result, Log). Shared
//! by the tests of this directory (`mod common;`).

#![allow(dead_code)]

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use silo_proto::{read_message, write_message, AgentConfig, Message, Outcome};

/// A running agent and the host's end of its connection. Dropping it kills
/// the agent and removes its directory.
pub struct Fixture {
    /// The agent's directory: `agent.json`, `agent.sock` and the task root
    /// `task/`.
    pub dir: PathBuf,
    agent: Child,
    /// The host's end of the agent's connection.
    pub conn: UnixStream,
    /// The function's name, in the ARN of every invoke.
    function_name: String,
    /// How many invokes [`Fixture::invoke`] sent: numbers their request ids.
    n: u32,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free TCP port on 127.0.0.1 (for the agent's Runtime API).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An empty directory `silo-<prefix>-<name>-<pid>` under the temporary
/// directory, holding an empty task root `task/`.
pub fn fresh_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("silo-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("task")).unwrap();
    dir
}

impl Fixture {
    /// Writes `config` to `dir/agent.json` and starts the agent on it in
    /// host mode, connecting to `dir/agent.sock` (with `--runtime-root
    /// runtime_root` when given); accepts its connection, reads from it
    /// with `read_timeout`, and returns it with the agent's first message
    /// (its `Hello`).
    pub fn start(
        dir: PathBuf,
        config: &AgentConfig,
        runtime_root: Option<&Path>,
        read_timeout: Duration,
    ) -> (Fixture, Message) {
        Self::start_with_args(dir, config, runtime_root, read_timeout, &[])
    }

    /// [`Fixture::start`] with `extra` arguments for the agent.
    pub fn start_with_args(
        dir: PathBuf,
        config: &AgentConfig,
        runtime_root: Option<&Path>,
        read_timeout: Duration,
        extra: &[std::ffi::OsString],
    ) -> (Fixture, Message) {
        std::fs::write(dir.join("agent.json"), serde_json::to_vec(config).unwrap()).unwrap();
        let sock = dir.join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_silo-guest-agent"));
        command
            .arg("--host-mode")
            .arg("--config")
            .arg(dir.join("agent.json"))
            .arg("--connect-unix")
            .arg(&sock)
            .arg("--api-addr")
            .arg(format!("127.0.0.1:{}", free_port()));
        if let Some(root) = runtime_root {
            command.arg("--runtime-root").arg(root);
        }
        command.args(extra);
        let agent = command.spawn().unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(read_timeout)).unwrap();
        let hello = read_message(&mut conn).unwrap();
        let fixture = Fixture {
            dir,
            agent,
            conn,
            function_name: config.function_name.clone(),
            n: 0,
        };
        (fixture, hello)
    }

    /// Sends invoke `request_id` of `tenant` with `payload` and the host's
    /// deadline `deadline_unix_ms`, and returns its outcome; hands each log
    /// line that arrives before it to `on_log` (its tenant, the line).
    /// Panics on any other message, or on a result for another request.
    pub fn invoke_with(
        &mut self,
        request_id: &str,
        tenant: &str,
        payload: &str,
        deadline_unix_ms: u64,
        mut on_log: impl FnMut(Option<String>, String),
    ) -> Outcome {
        write_message(
            &mut self.conn,
            &Message::Invoke {
                request_id: request_id.to_string(),
                tenant_id: Some(tenant.into()),
                deadline_unix_ms,
                function_arn: format!(
                    "arn:aws:lambda:us-east-1:000000000000:function:{}",
                    self.function_name
                ),
                trace_id: "Root=1-00000000-000000000000000000000000".into(),
                payload: payload.as_bytes().to_vec(),
            },
        )
        .unwrap();
        loop {
            match read_message(&mut self.conn).unwrap() {
                Message::Result {
                    request_id: id,
                    outcome,
                } => {
                    assert_eq!(id, request_id);
                    return outcome;
                }
                Message::Log {
                    line, tenant_id, ..
                } => on_log(tenant_id, line),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The agent's next message that is not a `Log` (log lines before it
    /// are dropped).
    pub fn next_non_log(&mut self) -> Message {
        loop {
            match read_message(&mut self.conn).unwrap() {
                Message::Log { .. } => continue,
                other => return other,
            }
        }
    }

    /// One invocation with request id `req-1`, `req-2`... in the order of
    /// these calls: its outcome and the log lines (tenant, line) that came
    /// with it.
    pub fn invoke(
        &mut self,
        tenant: &str,
        payload: &str,
        deadline_unix_ms: u64,
    ) -> (Outcome, Vec<(Option<String>, String)>) {
        self.n += 1;
        let id = format!("req-{}", self.n);
        let mut logs = Vec::new();
        let outcome = self.invoke_with(&id, tenant, payload, deadline_unix_ms, |t, l| {
            logs.push((t, l))
        });
        (outcome, logs)
    }
}

/// Starts the agent with managed runtime `runtime` (built here, cached) as
/// function `function_name` with `handler` and a 60 s timeout, its task
/// root holding `files` (name, text), in [`fresh_dir`]`(prefix, name)`;
/// checks that the agent says Hello first.
pub fn start_runtime(
    runtime: &str,
    prefix: &str,
    name: &str,
    function_name: &str,
    handler: &str,
    files: &[(&str, &str)],
) -> Fixture {
    let image = silo_images::runtime::runtime_image(runtime)
        .unwrap_or_else(|e| panic!("{runtime} runtime: {e:?}"));
    let dir = fresh_dir(prefix, name);
    for (file, text) in files {
        std::fs::write(dir.join("task").join(file), text).unwrap();
    }
    let config = AgentConfig {
        function_name: function_name.into(),
        handler: handler.into(),
        timeout_s: 60,
        task_root: dir.join("task").display().to_string(),
        ..AgentConfig::default()
    };
    let (fixture, hello) =
        Fixture::start(dir, &config, Some(&image.tree()), Duration::from_secs(120));
    assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
    fixture
}

/// The JSON a successful invocation returned; panics on a function error.
pub fn ok_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Ok(b) => serde_json::from_slice(b).unwrap(),
        Outcome::Err(e) => panic!("function failed: {e:?}"),
    }
}
