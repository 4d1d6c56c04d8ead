//! `silo images build`: builds ahead of time what the daemon boots and runs
//! (guest kernel, static guest agent, the demo function, the managed
//! runtimes' images (`python3.11`, `nodejs22.x`), the `silo-vmm` program when it is not
//! installed beside `silo`, and the KVM test host image where hardware KVM
//! is not usable), with progress on stderr, and prints where each one is.
//! The recipes travel in the binary (`silo_images::recipes`), so it works
//! from any directory, for an installed `silo` too: there the agent and
//! `silo-vmm` are the installed ones and the demo function is skipped.
//! The tests and `silo demo` build what they need on first use; `silo
//! serve` builds the kernel and agent at start but never a runtime (it
//! finds the ones built here).

use std::process::ExitCode;

/// `silo images` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ImagesCommand {
    /// Build every image now (cached: a second run is instant).
    Build,
}

/// Flags for `silo images`.
#[derive(clap::Args, Debug)]
pub struct ImagesArgs {
    #[command(subcommand)]
    command: ImagesCommand,
    /// The image cache to build into and look up (default `~/.cache/silo`;
    /// the systemd unit's is `/var/cache/silo`).
    #[arg(long, global = true, env = "SILO_CACHE_DIR")]
    cache_dir: Option<std::path::PathBuf>,
}

/// Runs `silo images ...`.
pub fn run(args: ImagesArgs) -> ExitCode {
    if let Some(d) = &args.cache_dir {
        // Read by silo_images::cache_dir() here and by the recipes it runs.
        // SAFETY (not unsafe in edition 2021, but as sound only
        // single-threaded): no other thread exists yet in `silo images`.
        std::env::set_var("SILO_CACHE_DIR", d);
    }
    match args.command {
        ImagesCommand::Build => match build() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("silo images build: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn build() -> Result<(), String> {
    eprintln!(
        "[images] guest kernel (Debian's linux-source-6.1; about 3-5 minutes the first time)"
    );
    let kernel = silo_images::kernel::guest_kernel().map_err(|e| e.to_string())?;
    println!("kernel   {}", kernel.vmlinux.display());
    println!("bzImage  {}", kernel.bz_image.display());
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    eprintln!("[images] static guest agent");
    let agent = silo_images::artifacts::agent_for(&exe).map_err(|e| e.to_string())?;
    println!("agent    {}", agent.display());
    if silo_images::artifacts::source_root().is_some() {
        eprintln!("[images] demo function (functions/counter)");
        let counter = silo_images::artifacts::counter_function().map_err(|e| e.to_string())?;
        println!("counter  {}", counter.display());
    } else {
        eprintln!("[images] demo function: skipped (it is built from a source checkout)");
    }
    for name in silo_images::runtime::MANAGED_RUNTIMES {
        eprintln!(
            "[images] runtime {name} (Debian, PyPI or npm packages; under a minute the first time)"
        );
        let rt = silo_images::runtime::runtime_image(name).map_err(|e| e.to_string())?;
        println!(
            "{name} {} ({} MiB tree; shared image {})",
            rt.dir.display(),
            rt.size_kib().unwrap_or(0) / 1024,
            rt.shared_image()
                .map_or("missing".into(), |p| p.display().to_string())
        );
    }
    println!("vmm      {}", ensure_vmm()?.display());
    if !silo_images::testhost::hardware_kvm_usable() {
        eprintln!("[images] KVM test host (no hardware KVM here)");
        let host = silo_images::testhost::image().map_err(|e| e.to_string())?;
        println!("testhost {}", host.display());
    }
    Ok(())
}

/// Makes sure the `silo-vmm` program can be found: `$SILO_VMM`; for a
/// `silo` built in a source checkout's `target/`, built from that checkout (so it
/// is never older than the sources); else beside this executable. When
/// built, `SILO_VMM` is set for this process and its children. Call it
/// before any thread is started.
pub fn ensure_vmm() -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let checkout = silo_images::artifacts::checkout_of(&exe);
    let source_built = std::env::var_os("SILO_VMM").is_none() && checkout.is_some();
    let vmm = silo_images::artifacts::vmm_beside(&exe);
    if vmm.is_file() && !source_built {
        return Ok(vmm);
    }
    if std::env::var_os("SILO_VMM").is_some() {
        return Err(format!("SILO_VMM={} is not a file", vmm.display()));
    }
    if !silo_images::artifacts::source_root()
        .is_some_and(|root| root.join("vmm/Cargo.toml").is_file())
    {
        return Err(format!(
            "the VMM program {} is missing: install it beside silo \
             (`cargo install --path vmm`) or set SILO_VMM",
            vmm.display()
        ));
    }
    if !source_built {
        eprintln!(
            "[images] silo-vmm is not beside {}: building it from this source tree",
            exe.display()
        );
    }
    let built = silo_images::artifacts::vmm().map_err(|e| e.to_string())?;
    // SAFETY (not unsafe in edition 2021, but as sound only single-threaded):
    // called at start-up before any other thread exists.
    std::env::set_var("SILO_VMM", &built);
    Ok(built)
}
