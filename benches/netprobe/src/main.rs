//! `silo-netprobe`: the client of `silo-bench bench-net`, the same static
//! program in a guest (its `/init`) and on the host. It connects to the
//! benchmark's server twice: it sends `BYTES` bytes on the first connection
//! (bulk egress; the server times it), then makes `COUNT` round trips of
//! 64-byte requests and answers on the second (the server times each).
//!
//! Arguments: `SERVER_IP BULK_PORT ECHO_PORT BYTES COUNT`, or as PID 1 the
//! same, comma-separated, in the environment variable `netprobe` (the
//! kernel passes `netprobe=...` from its command line to init). Prints
//! `NETPROBE_DONE ...` or `NETPROBE_FAIL ...`; as PID 1 it then powers the
//! guest off (`reboot`, which the VMM turns into its exit).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bytes of one round trip's request and of its answer.
const MSG: usize = 64;

struct Plan {
    server: Ipv4Addr,
    bulk_port: u16,
    echo_port: u16,
    bytes: u64,
    count: u32,
}

fn plan() -> Result<Plan, String> {
    let args: Vec<String> = match std::env::var("netprobe") {
        Ok(v) if std::process::id() == 1 => v.split(',').map(str::to_owned).collect(),
        _ => std::env::args().skip(1).collect(),
    };
    if args.len() != 5 {
        return Err(format!("expected SERVER_IP BULK_PORT ECHO_PORT BYTES COUNT, got {args:?}"));
    }
    let bad = |what: &str| format!("bad {what}: {args:?}");
    Ok(Plan {
        server: args[0].parse().map_err(|_| bad("server"))?,
        bulk_port: args[1].parse().map_err(|_| bad("bulk port"))?,
        echo_port: args[2].parse().map_err(|_| bad("echo port"))?,
        bytes: args[3].parse().map_err(|_| bad("bytes"))?,
        count: args[4].parse().map_err(|_| bad("count"))?,
    })
}

/// Connects, retrying for up to 30 s (the link may still be coming up).
fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < until => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("connect {addr}: {e}")),
        }
    }
}

fn run(p: &Plan) -> Result<String, String> {
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    // Bulk: BYTES in 64 KiB writes, then wait for the server to close.
    let mut bulk = connect(SocketAddr::from((p.server, p.bulk_port)))?;
    let chunk = vec![0x5a_u8; 64 * 1024];
    let t = Instant::now();
    let mut left = p.bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        bulk.write_all(&chunk[..n]).map_err(io("bulk write"))?;
        left -= n as u64;
    }
    bulk.shutdown(std::net::Shutdown::Write).map_err(io("bulk shutdown"))?;
    let mut sink = [0u8; 64];
    while bulk.read(&mut sink).map_err(io("bulk read"))? > 0 {}
    let bulk_ms = t.elapsed().as_secs_f64() * 1e3;
    // Round trips: one 64-byte request, one 64-byte answer, COUNT times.
    let mut echo = connect(SocketAddr::from((p.server, p.echo_port)))?;
    echo.set_nodelay(true).map_err(io("nodelay"))?;
    let mut msg = [0u8; MSG];
    let t = Instant::now();
    for i in 0..p.count {
        msg[..4].copy_from_slice(&i.to_le_bytes());
        echo.write_all(&msg).map_err(io("echo write"))?;
        echo.read_exact(&mut msg).map_err(io("echo read"))?;
    }
    let rtt_total_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(echo);
    Ok(format!(
        "bytes={} bulk_guest_ms={bulk_ms:.1} round_trips={} rtt_guest_total_ms={rtt_total_ms:.1}",
        p.bytes, p.count
    ))
}

extern "C" {
    fn reboot(cmd: i32) -> i32;
    fn sync();
}

fn main() {
    let result = plan().and_then(|p| run(&p));
    match &result {
        Ok(line) => println!("NETPROBE_DONE {line}"),
        Err(e) => println!("NETPROBE_FAIL {e}"),
    }
    let _ = std::io::stdout().flush();
    if std::process::id() == 1 {
        // LINUX_REBOOT_CMD_RESTART: the VMM sees the guest stop (as for
        // `reboot=k`/`reboot=t`) and exits.
        // SAFETY: plain system calls without pointers.
        unsafe {
            sync();
            reboot(0x0123_4567);
        }
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}
