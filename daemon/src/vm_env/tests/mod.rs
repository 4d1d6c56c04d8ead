//! The VM environment's tests, with fake VMMs and fake agents.

mod guest_logs;
mod log_tap;

use super::*;
use crate::console::Console;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child as StdChild, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use silo_proto::asynchronous::{read_message, write_message};
use silo_proto::{BootTiming, Message};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::process::Command;

/// A stand-in for a process connecting to an agent socket: connects to
/// `argv[1]` (after a line on stdin if `argv[3]` is `wait`), prints
/// `connected`, sends the bytes of the file `argv[2]`, then reads until
/// the daemon closes the connection and prints how many bytes it was
/// sent.
const PEER: &str = r#"
import socket, sys
path, frame, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "wait"
if wait:
    sys.stdin.readline()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
print("connected", flush=True)
try:
    s.sendall(open(frame, "rb").read())
except OSError:
    pass  # already closed by the daemon
n = 0
while True:
    try:
        b = s.recv(65536)
    except ConnectionResetError:
        break  # closed with our hello unread
    if not b:
        break
    n += len(b)
print(n, flush=True)
"#;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// Held by each test that points `SILO_VMM` (process-wide) at a fake
/// VMM, so that two such tests never swap fakes.
static FAKE_VMM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fresh private directory for one test.
fn test_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("silo-vm-env-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hello() -> Message {
    Message::Hello {
        agent_version: "test".into(),
        boot: BootTiming {
            kernel_uptime_at_agent_start_ns: 1,
            kernel_uptime_at_ready_ns: 2,
        },
    }
}

fn invoke_msg(payload: Vec<u8>) -> Message {
    Message::Invoke {
        request_id: "r-1".into(),
        tenant_id: Some("tenant-a".into()),
        deadline_unix_ms: 0,
        function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
        trace_id: String::new(),
        payload,
    }
}

/// A peer process (see [`PEER`]) sending a valid hello frame.
struct Peer {
    child: StdChild,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(socket: &Path, dir: &Path, wait: bool) -> Self {
        let frame = dir.join("hello.frame");
        std::fs::write(&frame, silo_proto::encode(&hello()).unwrap()).unwrap();
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(PEER)
            .arg(socket)
            .arg(&frame)
            .arg(if wait { "wait" } else { "now" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("these tests need python3 on PATH");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line the peer printed (blocking; run off the runtime).
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_string()
    }
}

fn label() -> VmLabel {
    VmLabel {
        function: "f".into(),
        tenant_id: Some("tenant-a".into()),
    }
}

/// A foreign process that connects first and sends a valid hello is
/// closed without being sent anything; the VMM's own connection, which
/// comes after it, is the agent channel and the only one that ever gets
/// an invoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_process_cannot_become_the_agent() {
    let dir = test_dir();
    let socket = dir.join("vsock_1024");
    let listener = UnixListener::bind(&socket).unwrap();
    // The "VMM": connects only when told to, after the intruder.
    let mut vmm = Peer::spawn(&socket, &dir, true);
    let vmm_pid = vmm.pid();
    let accept = tokio::spawn(async move {
        let r = accept_agent(
            &listener,
            ExpectedVmm {
                pid: vmm_pid,
                uid: None,
            },
            Duration::from_secs(20),
            &label(),
        )
        .await;
        (r, listener)
    });
    let mut intruder = Peer::spawn(&socket, &dir, false);
    let intruder = tokio::task::spawn_blocking(move || {
        assert_eq!(intruder.line(), "connected");
        intruder
    })
    .await
    .unwrap();
    vmm.go();
    let (accepted, _listener) = tokio::time::timeout(Duration::from_secs(20), accept)
        .await
        .expect("accept_agent returned")
        .unwrap();
    let (mut conn, boot) = accepted.expect("the VMM's connection is accepted");
    assert_eq!(boot.kernel_uptime_at_ready_ns, 2);
    assert_eq!(
        conn.peer_cred().unwrap().pid(),
        Some(vmm_pid as i32),
        "the agent channel is the VMM's connection"
    );
    let invoke = invoke_msg(b"secret payload".to_vec());
    let sent = silo_proto::encode(&invoke).unwrap().len();
    write_message(&mut conn, &invoke).await.unwrap();
    drop(conn);
    let (intruder_got, vmm_got) = tokio::task::spawn_blocking(move || {
        let (mut intruder, mut vmm) = (intruder, vmm);
        let got = (intruder.line(), {
            assert_eq!(vmm.line(), "connected");
            vmm.line()
        });
        let _ = intruder.child.wait();
        let _ = vmm.child.wait();
        got
    })
    .await
    .unwrap();
    assert_eq!(intruder_got, "0", "the intruder read EOF and nothing else");
    assert_eq!(vmm_got, sent.to_string(), "the VMM got the invoke");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VMM that exits before its agent connects (here: one that refuses
/// its flags) fails the boot at once, naming its exit status and what
/// it printed, instead of at the boot timeout.
#[tokio::test]
async fn a_vmm_that_exits_early_fails_the_boot_at_once() {
    let dir = test_dir();
    let fake = dir.join("fake-vmm");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"error: unexpected argument '--jail-root' found\" >&2\nexit 2\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _vmm = FAKE_VMM.lock().await;
    std::env::set_var("SILO_VMM", &fake);
    let spec = VmSpec {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("initrd"),
        mem_mib: 128,
        vcpus: 1,
        boot_timeout: Duration::from_secs(600),
        pmem: None,
        jail: JailMode::Insecure,
        console_bytes: 4096,
        memory: Default::default(),
    };
    let r = tokio::time::timeout(
        Duration::from_secs(300),
        VmEnv::boot(&spec, &dir.join("run")),
    )
    .await
    .expect("the boot failed before the test's own limit");
    std::env::remove_var("SILO_VMM");
    let Err(EnvError::Boot(msg)) = r else {
        panic!("expected a boot error");
    };
    assert!(
        msg.contains("exited (exit status: 2) before the guest agent connected"),
        "{msg}"
    );
    assert!(msg.contains("unexpected argument '--jail-root'"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Jailed, the agent connects from the VMM the jailer forked (a child of
/// the spawned process) with the VM's uid; a process outside that tree,
/// or in it with another uid, is refused. Unjailed, only the spawned
/// process itself.
#[test]
fn a_jailed_vmm_is_admitted_by_its_uid_and_process_tree() {
    let mut jailer = std::process::Command::new("sh")
        .args(["-c", "sleep 600 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(jailer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let vmm: i32 = line.trim().parse().unwrap();
    let spawned = jailer.id();
    let stranger = std::process::id() as i32;
    let peer = |pid: i32, uid: u32| RejectedPeer {
        pid: Some(pid),
        uid: Some(uid),
    };
    let jailed = ExpectedVmm {
        pid: spawned,
        uid: Some(1_000_000_007),
    };
    assert!(jailed.admits(&peer(vmm, 1_000_000_007)));
    assert!(jailed.admits(&peer(spawned as i32, 1_000_000_007)));
    assert!(
        !jailed.admits(&peer(vmm, 1_000_000_008)),
        "another VM's uid"
    );
    assert!(!jailed.admits(&peer(vmm, 0)), "the daemon's uid");
    assert!(
        !jailed.admits(&peer(stranger, 1_000_000_007)),
        "outside the tree"
    );
    assert!(!jailed.admits(&RejectedPeer {
        pid: None,
        uid: Some(1_000_000_007)
    }));
    let unjailed = ExpectedVmm {
        pid: spawned,
        uid: None,
    };
    assert!(unjailed.admits(&peer(spawned as i32, 0)));
    assert!(
        !unjailed.admits(&peer(vmm, 0)),
        "unjailed: the spawned process only"
    );
    let _ = std::process::Command::new("kill")
        .arg(vmm.to_string())
        .status();
    let _ = jailer.kill();
    let _ = jailer.wait();
}

/// Nothing but foreign connections until the boot timeout: a boot error
/// that says so, and every intruder was closed without a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_foreign_connections_fail_the_boot_and_say_so() {
    let dir = test_dir();
    let socket = dir.join("vsock_1024");
    let listener = UnixListener::bind(&socket).unwrap();
    // A VMM that never connects.
    let mut vmm = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let vmm_pid = vmm.id();
    // The intruder's connection waits in the listener's backlog: the 3 s
    // timeout starts once it is there, not while python3 starts.
    let mut intruder = Peer::spawn(&socket, &dir, false);
    let intruder_pid = intruder.pid();
    let mut intruder = tokio::task::spawn_blocking(move || {
        assert_eq!(intruder.line(), "connected");
        intruder
    })
    .await
    .unwrap();
    let accept = tokio::spawn(async move {
        accept_agent(
            &listener,
            ExpectedVmm {
                pid: vmm_pid,
                uid: None,
            },
            Duration::from_secs(3),
            &label(),
        )
        .await
    });
    let r = tokio::time::timeout(Duration::from_secs(20), accept)
        .await
        .expect("accept_agent returned")
        .unwrap();
    let _ = vmm.kill();
    let _ = vmm.wait();
    let err = match r {
        Ok((conn, _)) => panic!(
            "a foreign connection was accepted as the agent (peer {:?})",
            conn.peer_cred().map(|c| c.pid())
        ),
        Err(e) => e,
    };
    let msg = err.to_string();
    match &err {
        AcceptError::TimedOut {
            expected_pid,
            rejected,
            rejected_total,
            ..
        } => {
            assert_eq!(*expected_pid, vmm_pid);
            assert_eq!(*rejected_total, 1);
            assert_eq!(rejected[0].pid, Some(intruder_pid as i32));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(msg.contains(&format!("pid {vmm_pid}")), "{msg}");
    assert!(
        msg.contains("refused 1 connection(s) from other processes")
            && msg.contains(&format!("pid {intruder_pid}")),
        "{msg}"
    );
    let got = tokio::task::spawn_blocking(move || {
        let n = intruder.line();
        let _ = intruder.child.wait();
        n
    })
    .await
    .unwrap();
    assert_eq!(got, "0", "the intruder read EOF and nothing else");
    let _ = std::fs::remove_dir_all(&dir);
}

impl VmEnv {
    /// A VM environment from a VMM process and its already accepted agent
    /// connection (after the hello): for tests without a VM.
    pub(crate) fn from_parts(child: Child, conn: UnixStream, dir: PathBuf) -> Self {
        let guest = BootTiming {
            kernel_uptime_at_agent_start_ns: 0,
            kernel_uptime_at_ready_ns: 0,
        };
        Self {
            child,
            conn,
            dir,
            started: Instant::now(),
            broken: false,
            jail: None,
            console: Console::start(None::<tokio::io::Empty>, None::<tokio::io::Empty>, 0),
            label: VmLabel::default(),
            init_tail: Vec::new(),
            boot: BootReport {
                spawn_to_ready: Duration::ZERO,
                guest,
                timeline: BootTimeline::default(),
            },
            net: None,
            logs: None,
            pooled: false,
            reports: Default::default(),
        }
    }
}

/// A stand-in VMM process (`sleep 600`) and a VM environment over one
/// end of a socket pair whose other end, returned, is the fake agent
/// (its hello already read).
async fn fake_vm() -> (VmEnv, UnixStream, i32) {
    let (mut host, mut guest) = UnixStream::pair().unwrap();
    write_message(&mut guest, &hello()).await.unwrap();
    assert!(matches!(
        read_message(&mut host).await.unwrap(),
        Message::Hello { .. }
    ));
    let child = Command::new("sleep")
        .arg("600")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    (VmEnv::from_parts(child, host, test_dir()), guest, pid)
}

/// Whether process `pid` is gone (killed and reaped).
fn gone(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// A guest that says hello and then never reads: a 6 MB invoke with a
/// 3 s timeout fills the socket buffer. The write shares the invoke's
/// deadline, so the invoke ends `TimedOut` (reported as
/// `Sandbox.Timedout`) in seconds instead of hanging with its slot, and
/// destroying the environment then kills the VMM at once.
#[tokio::test]
async fn a_guest_that_stops_reading_times_out_and_its_vmm_is_killed() {
    let (mut env, _guest_never_reads, pid) = fake_vm().await;
    let dir = env.dir.clone();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        env.invoke(
            invoke_msg(vec![7; silo_proto::MAX_PAYLOAD]),
            Duration::from_secs(3),
        ),
    )
    .await
    .expect("the invoke hung past its deadline: the write to a non-reading guest is unbounded");
    assert!(matches!(r, Err(EnvError::TimedOut)), "{r:?}");
    tokio::time::timeout(Duration::from_secs(3), env.shutdown())
        .await
        .expect("destroying the environment hung");
    assert!(gone(pid), "the VMM (pid {pid}) is still there");
    assert!(!dir.exists());
}

/// The VMM is gone (its end of the channel closed): the invoke fails as
/// a protocol error and destroying the environment kills the VMM
/// process at once.
#[tokio::test]
async fn a_vmm_that_is_gone_fails_the_invoke_and_is_killed() {
    let (mut env, guest, pid) = fake_vm().await;
    drop(guest);
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        env.invoke(invoke_msg(b"{}".to_vec()), Duration::from_secs(3)),
    )
    .await
    .expect("the invoke hung");
    assert!(matches!(r, Err(EnvError::Protocol(_))), "{r:?}");
    tokio::time::timeout(Duration::from_secs(3), env.shutdown())
        .await
        .expect("destroying the environment hung");
    assert!(gone(pid), "the VMM (pid {pid}) is still there");
}

/// A VMM that floods its console and logs an error, but whose guest
/// never says hello: the boot fails naming the last console and VMM
/// log lines, and the console kept is the ring's size, not the flood's.
#[tokio::test]
async fn a_boot_failure_reports_the_tail_of_a_flooded_console() {
    let dir = test_dir();
    let fake = dir.join("fake-vmm");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         yes 'console flood line' | head -c 262144\n\
         echo 'the last console line'\n\
         echo \"vmm: cannot open $0\" >&2\n\
         echo 'vmm: the last log line' >&2\n\
         exec sleep 60\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let _vmm = FAKE_VMM.lock().await;
    std::env::set_var("SILO_VMM", &fake);
    let spec = VmSpec {
        kernel: "/nonexistent/vmlinux".into(),
        initrd: "/nonexistent/initrd".into(),
        mem_mib: 128,
        vcpus: 1,
        boot_timeout: Duration::from_secs(10),
        console_bytes: 4096,
        memory: Default::default(),
        pmem: None,
        jail: JailMode::Insecure,
    };
    let e = match VmEnv::boot(&spec, &dir).await {
        Ok(_) => panic!("a VM without an agent booted"),
        Err(e) => e,
    };
    std::env::remove_var("SILO_VMM");
    let err = e.to_string();
    // The log's error names the tail (and the host path the VMM printed);
    // what an API caller is told names neither.
    let host_path = fake.display().to_string();
    assert!(err.contains(&host_path), "{err}");
    let caller = e.caller_message();
    assert!(
        !caller.contains(&host_path) && !caller.contains("console line"),
        "{caller}"
    );
    assert!(err.contains("console tail"), "{err}");
    assert!(err.contains("the last console line"), "{err}");
    assert!(err.contains("vmm: the last log line"), "{err}");
    assert!(err.len() < 4096, "{} bytes of error", err.len());
    assert!(
        !err.contains('\n'),
        "guest text unescaped in an error: {err}"
    );
    // No file holds the console: the VM's directory is gone, nothing
    // else was written under the run directory.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("fake-vmm")]);
    let _ = std::fs::remove_dir_all(&dir);
}
