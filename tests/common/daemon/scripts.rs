//! Shell pieces for scripts that run `silo serve` where VMs boot (the test
//! host or hardware KVM), and boto3 for client scripts.

use super::*;

/// Bytes of the daemon's log that [`script_diagnostics`]' `silo_diag`
/// prints (its end).
pub const DIAG_LOG_BYTES: u32 = 20 * 1024;

/// Shell functions for a script that runs `silo serve` (pid in `$daemon`,
/// log in `daemon.log`, unauthenticated `/metrics` on 127.0.0.1:
/// `metrics_port`), so that a failure or a hang shows what the daemon was
/// doing rather than only that it stopped answering:
///
/// - `silo_diag`: prints, between `DIAG_BEGIN` and `DIAG_END` on the
///   script's own output (fd 9, whatever the caller redirected), the last
///   [`DIAG_LOG_BYTES`] of the daemon's log, its `/metrics` (within 10 s:
///   a daemon that cannot answer that is stuck as a whole), the process
///   list, memory, the kernel log's end, and each daemon thread's name,
///   state, wait channel and kernel stack;
/// - `silo_heartbeat SECONDS`: prints a `HEARTBEAT` line (uptime, load)
///   every so many seconds in the background (pid in `$heartbeat`): when a
///   run hangs, heartbeats that go on mean the test host runs and something
///   in it waits; heartbeats that stop mean the test host itself stalled
///   (its timers, which `within` needs too);
/// - `within SECONDS COMMAND...`: runs the command under busybox
///   `timeout`; if it had to be killed, prints `TIMED_OUT` and runs
///   `silo_diag` (and sets `diagnosed=1`). Its exit status is the
///   command's.
pub fn script_diagnostics(metrics_port: u16) -> String {
    format!(
        r#"exec 9>&1
diagnosed=0
silo_diag() {{
  echo DIAG_BEGIN >&9
  {{
    echo "--- daemon log, last {DIAG_LOG_BYTES} bytes of $(wc -c < daemon.log)"
    tail -c {DIAG_LOG_BYTES} daemon.log
    echo "--- /metrics"
    timeout 10 wget -qO- http://127.0.0.1:{metrics_port}/metrics | grep -v '^#' || echo "(no /metrics answer within 10 s)"
    echo "--- processes"
    ps -o pid,ppid,stat,time,args 2>/dev/null || ps
    echo "--- memory"
    grep -E '^(MemTotal|MemFree|MemAvailable|Shmem):' /proc/meminfo
    echo "--- kernel log, last 30 lines"
    dmesg | tail -n 30
    echo "--- daemon threads (name state wchan, kernel stack)"
    for t in /proc/$daemon/task/*; do
      echo "$(cat $t/comm) $(cut -d' ' -f3 $t/stat) $(cat $t/wchan 2>/dev/null)"
      head -n 6 $t/stack 2>/dev/null | sed 's/^/    /'
    done
  }} >&9 2>&1
  echo DIAG_END >&9
}}
silo_heartbeat() {{
  ( while sleep "$1"; do echo "HEARTBEAT $(cut -d' ' -f1 /proc/uptime) s up, load $(cut -d' ' -f1-3 /proc/loadavg)" >&9; done ) &
  heartbeat=$!
}}
within() {{
  w_s=$1; shift
  timeout "$w_s" "$@"; w_rc=$?
  if [ $w_rc -eq 124 ] || [ $w_rc -eq 143 ] || [ $w_rc -eq 137 ]; then
    echo "TIMED_OUT after $w_s s (exit $w_rc): $*" >&9
    silo_diag; diagnosed=1
  fi
  return $w_rc
}}
"#
    )
}

/// Shell lines for a [`super::run_with_kvm`] script (its work directory
/// holding [`script_files`]) that start `silo serve` on 127.0.0.1:`port`
/// (unauthenticated `/metrics` on `port + 1`) with `SILO_LOG=<silo_log>` if
/// given, its stderr in `daemon.log` and its pid in `$daemon`; export the
/// admin key and `SILO_ENDPOINT` for the `silo` CLI; define
/// [`script_diagnostics`]' `silo_diag` and `within`; and wait until the
/// daemon answers (else print `NO_DAEMON` and the diagnostics, and exit 1).
pub fn script_start_daemon(port: u16, silo_log: Option<&str>) -> String {
    let (key, secret) = ADMIN;
    let log = silo_log
        .map(|l| format!("SILO_LOG={l} "))
        .unwrap_or_default();
    let metrics = port + 1;
    let diag = script_diagnostics(metrics);
    format!(
        r#"export AWS_ACCESS_KEY_ID={key} AWS_SECRET_ACCESS_KEY={secret} SILO_ENDPOINT=http://127.0.0.1:{port}
{diag}{log}silo serve --config silo.toml --listen 127.0.0.1:{port} --metrics-listen 127.0.0.1:{metrics} --data-dir ./data --kernel vmlinux --agent agent 2> daemon.log &
daemon=$!
i=0; until silo invoke --name none --payload '{{}}' 2>&1 | grep -q ResourceNotFound; do i=$((i+1)); [ $i -gt 300 ] && echo NO_DAEMON && silo_diag && exit 1; sleep 0.2; done
"#
    )
}

/// A shell line that creates the per-tenant function `name` with `silo
/// create-function` from `code` (`--bootstrap <file>` or `--zip <file>`)
/// and a timeout of `timeout_s` seconds, its answer in the file `out`; on
/// failure (or no answer within 300 s) it prints that answer and
/// `silo_diag`'s diagnostics, and exits 1.
pub fn script_create_function(name: &str, code: &str, timeout_s: u32, out: &str) -> String {
    format!(
        "within 300 silo create-function --name {name} {code} --per-tenant --timeout {timeout_s} > {out} \
         || {{ cat {out}; [ $diagnosed = 1 ] || silo_diag; exit 1; }}\n"
    )
}

/// The work files of a script that starts a daemon with
/// [`script_start_daemon`]: the guest kernel (`vmlinux`), the agent
/// (`agent`), the counter function's bootstrap (`counter`) and `config` as
/// `silo.toml`.
pub fn script_files(config: String) -> Vec<(&'static str, WorkFile)> {
    let (kernel, agent) = images();
    let counter = silo_images::artifacts::counter_function().unwrap();
    vec![
        ("vmlinux", WorkFile::Host(kernel)),
        ("agent", WorkFile::Host(agent)),
        ("counter", WorkFile::Host(counter)),
        ("silo.toml", WorkFile::Bytes(config.into_bytes())),
    ]
}

/// Makes sure `has` holds, installing `package` from PyPI with pip if it
/// does not (`.ci/run` installs the test tools; on a fresh machine this
/// does, so the README's test command needs no other set-up). Panics,
/// naming `what`, if it still does not.
pub fn ensure_from_pypi(what: &str, package: &str, has: impl Fn() -> bool) {
    if !has() {
        eprintln!("installing {what} from PyPI");
        let _ = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                package,
            ])
            .status();
    }
    assert!(
        has(),
        "{what} is not installed and `python3 -m pip install {package}` failed"
    );
}

/// Makes sure this machine's `python3` can import boto3 (and jmespath, which
/// boto3 installs and the scripts use).
pub fn ensure_boto3() {
    ensure_from_pypi("boto3", "boto3", || {
        Command::new("python3")
            .args(["-c", "import boto3, jmespath"])
            .status()
            .is_ok_and(|s| s.success())
    });
}
