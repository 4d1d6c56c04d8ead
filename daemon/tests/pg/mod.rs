//! A real PostgreSQL per test: `initdb` into a temporary directory, then
//! `postgres` on a free loopback port (and a Unix socket in the same
//! directory), stopped and removed on drop. Debian's binaries are found
//! under `/usr/lib/postgresql/<version>/bin` (`.ci/run` installs the
//! `postgresql` package). PostgreSQL refuses to run as root: as root the
//! server runs as the `postgres` user the package creates.
//!
//! Shared by the daemon's tests and the workspace's end-to-end tests
//! (`#[path]`-included), so it uses only the daemon's dependencies.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL of one test.
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
pub fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql): apt-get install postgresql")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql")
        .1
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    /// Makes a new cluster and starts it; waits until it takes connections.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "silo-pg-{}-{}",
            std::process::id(),
            silo_aws::id::random_uuid()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            // SAFETY: getpwnam with a NUL-terminated name; the entry is
            // read at once, before any other passwd call.
            let (uid, gid) = unsafe {
                let pw = libc::getpwnam(c"postgres".as_ptr());
                assert!(
                    !pw.is_null(),
                    "running as root needs the postgres user (Debian's postgresql package)"
                );
                ((*pw).pw_uid, (*pw).pw_gid)
            };
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
            Some((uid, gid))
        } else {
            None
        };
        let mut s = Self {
            bin,
            dir,
            port: free_port(),
            owner,
            child: None,
        };
        let out = s
            .command("initdb")
            .args(["-D"])
            .arg(s.data())
            .args(["-U", "silo", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        s.resume();
        s
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.bin.join(name));
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// The server's directory (its log is `postgres.log` there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL of database `postgres` as user `silo`.
    pub fn url(&self) -> String {
        format!("postgres://silo@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server again (after [`stop`](Self::stop)), on the same
    /// port and data; waits until it takes connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            // Tests need no durability across a power loss.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
                && postgres::Client::connect(&self.url(), postgres::NoTls).is_ok()
            {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postgres exited ({st}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not take connections in 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGINT);
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Runs `sql` (one or more statements) as the superuser.
    pub fn execute(&self, sql: &str) {
        let mut c = postgres::Client::connect(&self.url(), postgres::NoTls).unwrap();
        c.batch_execute(sql).unwrap();
    }

    /// Makes database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.execute(&format!("CREATE DATABASE {name}"));
        format!("postgres://silo@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate shutdown: the data is thrown away.
            signal(&c, libc::SIGQUIT);
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `sig` to the server process `c` (ours, not yet waited for).
fn signal(c: &Child, sig: i32) {
    // SAFETY: kill has no memory effects; `c` is our child, not yet reaped,
    // so its pid is not reused.
    unsafe { libc::kill(c.id() as i32, sig) };
}
