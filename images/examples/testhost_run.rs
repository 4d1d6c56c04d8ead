//! Developer tool: run a shell command in the KVM test host with files.
//!
//! `cargo run -p silo-images --example testhost_run -- [-f HOST:GUEST]... [-b HOSTBIN:GUEST]...
//!  [-q] [-c CPUS] [-p HOSTPORT:GUESTPORT]... 'command'`
//! (`-b` also copies the binary's shared libraries, `-q` includes QEMU for
//! nested `-M microvm` guests, `-p` forwards a TCP port).

fn main() {
    let usage =
        "usage: [-f HOST:GUEST]... [-b BIN:GUEST]... [-q] [-c CPUS] [-p HPORT:GPORT]... COMMAND";
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.pop() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    match build(args) {
        Ok(host) => match host.run(&command) {
            Ok(out) => {
                println!("{}", out.output);
                eprintln!(
                    "boot to command {:.1?}, total {:.1?}",
                    out.boot_time, out.total_time
                );
                std::process::exit(out.exit_code);
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        Err(e) => {
            eprintln!("{e}\n{usage}");
            std::process::exit(2);
        }
    }
}

fn build(args: Vec<String>) -> Result<silo_images::testhost::TestHost, String> {
    let mut host = silo_images::testhost::TestHost::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        if flag == "-q" {
            host = host.with_qemu().map_err(|e| e.to_string())?;
            continue;
        }
        let spec = it.next().ok_or(format!("{flag} needs a value"))?;
        let pair = || {
            spec.split_once(':')
                .ok_or(format!("{flag} {spec}: expected A:B"))
        };
        host = match flag.as_str() {
            "-f" => {
                let (h, g) = pair()?;
                host.file(h, g, 0o755)
            }
            "-b" => {
                let (h, g) = pair()?;
                host.binary_with_libs(h, g).map_err(|e| e.to_string())?
            }
            "-c" => host.cpus(
                spec.parse()
                    .map_err(|_| format!("-c {spec}: not a number"))?,
            ),
            "-p" => {
                let (h, g) = pair()?;
                let port = |p: &str| p.parse::<u16>().map_err(|_| format!("-p {spec}: bad port"));
                host.port_forward(port(h)?, port(g)?)
            }
            other => return Err(format!("unknown flag {other}")),
        };
    }
    Ok(host)
}
