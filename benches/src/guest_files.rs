//! The guest files the benchmarks and `silo demo` boot function VMs with:
//! a kernel, the static guest agent and the counter function, each given by
//! a flag or built from this source tree.

use std::path::PathBuf;

use silo_images::testhost::TestHost;

/// `--kernel`, `--agent` and `--function`, flattened into a command's flags
/// (`#[command(flatten)]`). A command that words their help its own way
/// replaces it with `#[command(mut_arg("kernel", |a| a.help("...")))]`.
#[derive(clap::Args, Debug)]
pub struct GuestFileArgs {
    /// Guest kernel [default: build silo's guest kernel].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Static guest agent [default: build it].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// The counter function [default: build functions/counter].
    #[arg(long)]
    pub function: Option<PathBuf>,
}

/// The guest files of [`GuestFileArgs`], each given or built.
#[derive(Clone, Debug)]
pub struct GuestFiles {
    /// The guest kernel (by default silo's ELF vmlinux).
    pub kernel: PathBuf,
    /// The static guest agent.
    pub agent: PathBuf,
    /// The counter function's binary.
    pub function: PathBuf,
}

impl GuestFileArgs {
    /// The files given, the others built (in this order: kernel, agent,
    /// function); the kernel's default is silo's vmlinux.
    pub fn resolve(&self) -> Result<GuestFiles, String> {
        Ok(GuestFiles {
            kernel: kernel_or_vmlinux(self.kernel.as_ref())?,
            agent: agent_or_build(self.agent.as_ref())?,
            function: function_or_build(self.function.as_ref())?,
        })
    }
}

/// silo's guest kernel, built (cached) from this source tree.
pub fn built_kernel() -> Result<silo_images::kernel::GuestKernel, String> {
    silo_images::kernel::guest_kernel().map_err(|e| e.to_string())
}

/// `given`, or the vmlinux of [`built_kernel`].
pub fn kernel_or_vmlinux(given: Option<&PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(k) => Ok(k.clone()),
        None => Ok(built_kernel()?.vmlinux),
    }
}

/// `given`, or the static guest agent of this program: built from the
/// checkout it runs from, else the one installed with it
/// ([`silo_images::artifacts::agent_for`]).
pub fn agent_or_build(given: Option<&PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(a) => Ok(a.clone()),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))
            .and_then(|exe| silo_images::artifacts::agent_for(&exe).map_err(|e| e.to_string())),
    }
}

/// `given`, or the counter function (`functions/counter`) built from this
/// source tree.
pub fn function_or_build(given: Option<&PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(f) => Ok(f.clone()),
        None => silo_images::artifacts::counter_function().map_err(|e| e.to_string()),
    }
}

impl GuestFiles {
    /// `host` with these files in its working directory `/work`: the kernel
    /// as `kernel_name`, the agent as `agent`, the function as `counter`
    /// (the names the commands pass back to themselves there).
    pub fn copied_into(&self, host: TestHost, kernel_name: &str) -> TestHost {
        host.file(&self.kernel, &format!("/work/{kernel_name}"), 0o644)
            .file(&self.agent, "/work/agent", 0o755)
            .file(&self.function, "/work/counter", 0o755)
    }

    /// Runs `silo <bench_and_flags> --here --kernel vmlinux --agent agent
    /// --function counter --out r.json` in the KVM test host with these
    /// files, and returns the JSON it wrote, marked as emulated times.
    pub fn bench_json_in_test_host(
        &self,
        bench_and_flags: &str,
    ) -> Result<serde_json::Value, String> {
        use silo_images::placement::{between_markers, run_checked, test_host_with_this_program};
        eprintln!("no hardware KVM here: the benchmark runs in the KVM test host (times are emulated; compare ratios)");
        let host = test_host_with_this_program()
            .map_err(|e| e.to_string())?
            .timeout(std::time::Duration::from_secs(1800))
            .memory_mib(4096);
        let host = self.copied_into(host, "vmlinux");
        let out = run_checked(
            &host,
            "benchmark",
            &format!(
                "SILO_LOG=warn silo {bench_and_flags} --here --kernel vmlinux --agent agent \
                 --function counter --out r.json && echo BENCH_JSON_BEGIN && cat r.json && echo BENCH_JSON_END"
            ),
        )
        .map_err(|e| e.to_string())?;
        let json = between_markers(&out.output, "BENCH_JSON_BEGIN", "BENCH_JSON_END")
            .ok_or("no JSON in the test host's output")?;
        let mut results: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| format!("results: {e}"))?;
        results["where"] = serde_json::json!(
            "KVM test host (QEMU TCG, nested SVM): emulated times, compare ratios"
        );
        Ok(results)
    }
}
