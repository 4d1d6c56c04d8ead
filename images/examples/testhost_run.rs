//! Developer tool: run a shell command in the KVM test host with files.
//!
//! `cargo run -p silo-images --example testhost_run -- [-f HOST:GUEST]... [-b HOSTBIN:GUEST]... 'command'`
//! (`-b` also copies the binary's shared libraries).

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let command = args
        .pop()
        .expect("usage: [-f HOST:GUEST]... [-b BIN:GUEST]... COMMAND");
    let mut host = silo_images::testhost::TestHost::new();
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let spec = it.next().expect("flag needs HOST:GUEST");
        let (h, g) = spec.split_once(':').expect("HOST:GUEST");
        host = match flag.as_str() {
            "-f" => host.file(h, g, 0o755),
            "-b" => host.binary_with_libs(h, g).expect("binary"),
            other => panic!("unknown flag {other}"),
        };
    }
    match host.run(&command) {
        Ok(out) => {
            println!("{}", out.output);
            std::process::exit(out.exit_code);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
