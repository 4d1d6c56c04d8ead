//! `silo bench-pmem-memory`: what N VMs reading the same files cost the
//! host when the files come from one shared virtio-pmem image (EROFS, DAX)
//! against the same files copied into each VM's initramfs.
//!
//! Both variants boot N VMs at once with the same kernel, memory size and
//! `/init`; a third, `idle`, mounts the image and reads nothing (the cost of
//! an idle VM, to subtract); a fourth, `pmem-per-tenant`, gives the VMs of
//! each of `--tenants` tenants their tenant's copy of the image, made as
//! the daemon makes it by default (`pmem_tenants`), against `pmem` where
//! every VM maps the one image. Each guest reads every file of the set (about `--mib` MiB of
//! pseudo-random data, so nothing is deduplicated or zero), prints a marker
//! and stays idle. With every VM idle the harness records, per variant: the
//! host's `MemFree` drop since before the boots, every VMM's `Rss` and `Pss`
//! (`/proc/PID/smaps_rollup`), and the size of the shared file on the host
//! (the image, or the initramfs), counted once as page cache. The host's
//! cost of the variant is the `MemFree` drop plus that file. Optionally
//! (`--baseline-kernel`) it also boots the same tiny guest alternately with
//! a baseline kernel and the current one, for the boot-time cost of kernel
//! options. Without hardware KVM it runs inside the KVM test host
//! (emulated: compare ratios).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_images::placement::{
    between_markers, run_checked, run_here_or_in_test_host, test_host_with_this_program,
};
use silo_initramfs::newc::NewcWriter;

use crate::boot::GUEST_INIT as TINY_INIT;
use crate::guest_files::kernel_or_vmlinux;

/// Flags for `silo bench-pmem-memory`.
#[derive(clap::Args, Debug)]
pub struct PmemMemoryArgs {
    /// VMs booted at once in each variant.
    #[arg(long, default_value_t = 8)]
    vms: usize,
    /// Size of the file set every guest reads, in MiB.
    #[arg(long, default_value_t = 30)]
    mib: u64,
    /// Guest memory of each VM, in MiB.
    #[arg(long, default_value_t = 256)]
    mem_mib: u32,
    /// Boot a tiny guest this many times with each kernel, alternating, when
    /// --baseline-kernel is given.
    #[arg(long, default_value_t = 6)]
    boots: usize,
    /// A baseline guest kernel (e.g. an older build's vmlinux) to compare
    /// the current kernel's boot time against.
    #[arg(long)]
    baseline_kernel: Option<PathBuf>,
    /// Guest kernel [default: silo's vmlinux].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Tenants the VMs belong to in the `pmem-per-tenant` variant (VMs go
    /// to tenants in turn).
    #[arg(long, default_value_t = 3)]
    tenants: usize,
    /// Also time copying these images on this host (e.g. a runtime's
    /// `rt.img`), as a tenant's first boot does.
    #[arg(long)]
    copy_image: Vec<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-pmem-memory.json")]
    out: PathBuf,
    /// Run here even without hardware KVM.
    #[arg(long)]
    here: bool,
    /// Prepared inputs (set by the harness when it re-runs itself in the
    /// test host): directory holding runtime.img, pmem.cpio, copy.cpio.
    #[arg(long, hide = true)]
    inputs: Option<PathBuf>,
}

const GUEST_INIT: &str = r#"
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /opt/runtime
# libnvdimm registers the pmem disk asynchronously: wait for it.
i=0; while [ -e /sys/bus/virtio/devices/virtio0 ] && [ ! -e /dev/pmem0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
if [ -e /dev/pmem0 ]; then mount -t erofs -o ro,dax /dev/pmem0 /opt/runtime || echo SILO_MOUNT_FAILED; fi
find /opt/runtime -type f -exec cat {} + > /dev/null
echo "SILO_READ_DONE kib=$(du -sk /opt/runtime | cut -f1) guest_memfree_kib=$(grep MemFree /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
while true; do sleep 3600; done
"#;

/// The line of [`GUEST_INIT`] that reads every file (left out for the idle
/// variant).
const READ_ALL: &str = "find /opt/runtime -type f -exec cat {} + > /dev/null\n";

const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check quiet";

/// Runs the benchmark.
pub fn run(args: PmemMemoryArgs) -> ExitCode {
    crate::exit_code("silo bench-pmem-memory", run_inner(args))
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn run_inner(args: PmemMemoryArgs) -> Result<(), String> {
    if args.vms == 0 || args.mib == 0 {
        return Err("--vms and --mib must be at least 1".into());
    }
    let kernel = kernel_or_vmlinux(args.kernel.as_ref())?;
    if let Some(inputs) = &args.inputs {
        return run_here(&args, &kernel, inputs, Value::Null);
    }
    let copies = if args.copy_image.is_empty() {
        Value::Null
    } else {
        eprintln!("[pmem-memory] timing image copies on this host");
        crate::pmem_tenants::copy_latency(&args.copy_image, 5)?
    };
    let dir = crate::scratch_path("silo-bench-pmem");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(err)?;
    let result = prepare(&args, &dir).and_then(|()| {
        run_here_or_in_test_host(
            args.here,
            || run_here(&args, &kernel, &dir, copies.clone()),
            || in_test_host(&args, &kernel, &dir, copies.clone()),
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Pseudo-random bytes (xorshift), different per `seed`.
fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The file set (`files/`), its EROFS image and the two initramfs images.
fn prepare(args: &PmemMemoryArgs, dir: &Path) -> Result<(), String> {
    let tree = dir.join("files");
    let mut files = Vec::new();
    let mut left = args.mib << 20;
    let mut i = 0u32;
    while left > 0 {
        // 16 KiB to 240 KiB, like a library's modules and shared objects.
        let len = (16 << 10) * (1 + u64::from(i % 15));
        let len = len.min(left);
        let rel = format!("lib/pkg{}/mod{i}.bin", i % 12);
        let p = tree.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).map_err(err)?;
        let data = noise(i + 1, len as usize);
        std::fs::write(&p, &data).map_err(err)?;
        files.push((rel, data));
        left -= len;
        i += 1;
    }
    eprintln!(
        "[pmem-memory] {} files, {} MiB; building the EROFS image and the initramfs images",
        files.len(),
        args.mib
    );
    silo_images::fsimage::build_fs_image(&tree, &dir.join("runtime.img")).map_err(err)?;
    std::fs::write(dir.join("pmem.cpio"), initramfs(GUEST_INIT, &[])?).map_err(err)?;
    std::fs::write(dir.join("copy.cpio"), initramfs(GUEST_INIT, &files)?).map_err(err)?;
    std::fs::write(dir.join("tiny.cpio"), initramfs(TINY_INIT, &[])?).map_err(err)?;
    let idle = GUEST_INIT.replace(READ_ALL, "");
    std::fs::write(dir.join("idle.cpio"), initramfs(&idle, &[])?).map_err(err)?;
    std::fs::remove_dir_all(&tree).map_err(err)?;
    Ok(())
}

/// busybox, `/init` and `files` under `/opt/runtime`.
fn initramfs(init: &str, files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let busybox = std::fs::read(silo_images::guest::BUSYBOX).map_err(err)?;
    let mut w = NewcWriter::new(Vec::new());
    for d in ["/dev", "/proc", "/sys", "/tmp", "/bin", "/sbin", "/usr"] {
        w.dir(d, 0o755).map_err(err)?;
    }
    w.dir("/usr/bin", 0o755).map_err(err)?;
    w.dir("/usr/sbin", 0o755).map_err(err)?;
    w.char_device("/dev/console", 0o600, 5, 1).map_err(err)?;
    w.file("/bin/busybox", 0o755, &busybox).map_err(err)?;
    w.file(
        "/init",
        0o755,
        format!("#!/bin/busybox sh\n{init}\n").as_bytes(),
    )
    .map_err(err)?;
    let mut dirs = std::collections::BTreeSet::new();
    for (rel, _) in files {
        let mut p = Path::new("/opt/runtime").join(rel);
        while p.pop() && p != Path::new("/") {
            dirs.insert(p.clone());
        }
    }
    for d in &dirs {
        w.dir(&d.to_string_lossy(), 0o755).map_err(err)?;
    }
    for (rel, data) in files {
        w.file(&format!("/opt/runtime/{rel}"), 0o644, data)
            .map_err(err)?;
    }
    w.finish().map_err(err)
}

fn in_test_host(
    args: &PmemMemoryArgs,
    kernel: &Path,
    dir: &Path,
    copies_here: Value,
) -> Result<(), String> {
    eprintln!("[pmem-memory] no hardware KVM here: running inside the KVM test host");
    let mut host = test_host_with_this_program()
        .map_err(err)?
        .memory_mib(3072)
        .timeout(Duration::from_secs(1800))
        .file(kernel, "/work/kernel", 0o644);
    for f in [
        "runtime.img",
        "pmem.cpio",
        "copy.cpio",
        "tiny.cpio",
        "idle.cpio",
    ] {
        host = host.file(dir.join(f), &format!("/work/in/{f}"), 0o644);
    }
    let mut extra = String::new();
    if let Some(b) = &args.baseline_kernel {
        host = host.file(b, "/work/baseline-kernel", 0o644);
        extra = " --baseline-kernel baseline-kernel".into();
    }
    let cmd = format!(
        "SILO_LOG=warn silo bench-pmem-memory --here --inputs in --kernel kernel --vms {} --mib {} \
         --mem-mib {} --boots {} --tenants {}{extra} --out r.json && echo PMEM_JSON_BEGIN && cat r.json && echo PMEM_JSON_END",
        args.vms, args.mib, args.mem_mib, args.boots, args.tenants
    );
    let out = run_checked(&host, "the pmem memory benchmark", &cmd).map_err(err)?;
    let text = between_markers(&out.output, "PMEM_JSON_BEGIN", "PMEM_JSON_END")
        .ok_or("no results from the test host")?;
    let mut results: Value = serde_json::from_str(&text).map_err(err)?;
    results["host"] = json!("KVM test host (emulated: compare ratios)");
    if !copies_here.is_null() {
        results["copy_latency_outside_test_host"] = copies_here;
    }
    finish(args, &results)
}

fn finish(args: &PmemMemoryArgs, results: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(results).map_err(err)?;
    std::fs::write(&args.out, &text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("{text}");
    for k in ["summary", "per_tenant_summary"] {
        if let Some(s) = results.get(k) {
            eprintln!("[pmem-memory] {s}");
        }
    }
    Ok(())
}

/// `/proc/meminfo` fields in KiB.
fn meminfo() -> Result<std::collections::BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(err)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect())
}

/// `Rss`, `Pss` and their parts for `pid`, in KiB.
fn smaps_rollup(pid: u32) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("smaps_rollup of VMM {pid}: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kib = v.split_whitespace().next()?.parse().ok()?;
            [
                "Rss",
                "Pss",
                "Pss_Anon",
                "Pss_File",
                "Pss_Shmem",
                "Anonymous",
            ]
            .contains(&k)
            .then(|| (k.to_string(), kib))
        })
        .collect())
}

fn vmm_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(err)?;
    Ok(silo_images::artifacts::vmm_beside(&exe))
}

/// Kills and reaps every VMM this harness started.
fn stop_all(children: &mut Vec<(Child, PathBuf)>) {
    for (c, _) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

/// Boots `vms` VMs of one variant at once, waits until each has read its
/// files, measures, stops them.
fn variant(
    args: &PmemMemoryArgs,
    kernel: &Path,
    inputs: &Path,
    name: &str,
    work: &Path,
) -> Result<Value, String> {
    let vmm = vmm_path()?;
    let (initrd, image) = match name {
        "pmem" | "pmem-per-tenant" => (inputs.join("pmem.cpio"), Some(inputs.join("runtime.img"))),
        "idle" => (inputs.join("idle.cpio"), Some(inputs.join("runtime.img"))),
        _ => (inputs.join("copy.cpio"), None),
    };
    let shared_file = image.clone().unwrap_or_else(|| initrd.clone());
    let mut shared_kib = std::fs::metadata(&shared_file).map_err(err)?.len() / 1024;
    std::thread::sleep(Duration::from_secs(2));
    let before = meminfo()?;
    // Per tenant: no VM maps the image itself (it is not counted); the
    // copies, made now, are in the MemFree drop as far as they stay in
    // memory (in full on a tmpfs).
    let tenant_copies = match (name, &image) {
        ("pmem-per-tenant", Some(img)) => {
            shared_kib = 0;
            Some(crate::pmem_tenants::TenantCopies::make(
                img,
                args.tenants,
                &work.join("copies"),
            )?)
        }
        _ => None,
    };
    let mut children = Vec::new();
    let started = Instant::now();
    for i in 0..args.vms {
        let log = work.join(format!("{name}-{i}.log"));
        let mut cmd = Command::new(&vmm);
        cmd.arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(&initrd)
            .args(["--mem-mib", &args.mem_mib.to_string()])
            .args(["--cmdline", CMDLINE])
            .arg("--serial")
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        match (&tenant_copies, &image) {
            (Some(copies), _) => {
                cmd.arg("--pmem").arg(copies.image_for_vm(i));
            }
            (None, Some(img)) => {
                cmd.arg("--pmem").arg(img);
            }
            (None, None) => {}
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", vmm.display()))?;
        children.push((child, log));
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut guest_lines = Vec::new();
    loop {
        guest_lines.clear();
        for (c, log) in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                stop_all(&mut children);
                return Err(format!("a {name} VMM exited early ({status}):\n{text}"));
            }
            let text = std::fs::read_to_string(&*log).unwrap_or_default();
            if text.contains("SILO_MOUNT_FAILED") {
                stop_all(&mut children);
                return Err(format!("a {name} guest could not mount its image:\n{text}"));
            }
            if let Some(l) = text.lines().find(|l| l.starts_with("SILO_READ_DONE")) {
                guest_lines.push(l.to_string());
            }
        }
        if guest_lines.len() == children.len() {
            break;
        }
        if Instant::now() > deadline {
            stop_all(&mut children);
            return Err(format!(
                "{name}: the guests did not finish reading in 900 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ready_s = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let after = meminfo()?;
    let mut vmms = Vec::new();
    for (c, _) in &children {
        vmms.push(smaps_rollup(c.id())?);
    }
    stop_all(&mut children);
    let sum = |k: &str| {
        vmms.iter()
            .map(|m| m.get(k).copied().unwrap_or(0))
            .sum::<u64>()
    };
    let memfree_drop = before["MemFree"].saturating_sub(after["MemFree"]);
    let total = memfree_drop + shared_kib;
    eprintln!(
        "[pmem-memory] {name}: {} VMs read their files in {ready_s:.1} s; MemFree drop {} MiB, \
         shared file {} MiB, sum RSS {} MiB, sum PSS {} MiB",
        args.vms,
        memfree_drop / 1024,
        shared_kib / 1024,
        sum("Rss") / 1024,
        sum("Pss") / 1024
    );
    Ok(json!({
        "vms": args.vms,
        "seconds_to_all_read": ready_s,
        "memfree_drop_kib": memfree_drop,
        "shared_file_kib": shared_kib,
        "host_total_kib": total,
        "per_vm_kib": memfree_drop / args.vms as u64,
        "sum_rss_kib": sum("Rss"),
        "sum_pss_kib": sum("Pss"),
        "sum_pss_anon_kib": sum("Pss_Anon"),
        "sum_pss_file_kib": sum("Pss_File"),
        "sum_pss_shmem_kib": sum("Pss_Shmem"),
        "per_vmm": vmms,
        "tenant_copy_ms": tenant_copies.as_ref().map(|c| c.copy_ms.clone()),
        "guest_lines": guest_lines,
        "meminfo_before": before,
        "meminfo_after": after,
    }))
}

/// Boots the tiny guest alternately with the baseline and current kernels;
/// guest uptime at init and process wall time for each.
fn boot_cost(
    args: &PmemMemoryArgs,
    kernel: &Path,
    baseline: &Path,
    inputs: &Path,
) -> Result<Value, String> {
    let vmm = vmm_path()?;
    let initrd = inputs.join("tiny.cpio");
    let mut res = json!({ "baseline": {"uptime_s": [], "wall_s": []}, "current": {"uptime_s": [], "wall_s": []} });
    for round in 0..args.boots * 2 {
        // Alternate which kernel goes first in each pair.
        let which = if (round % 2 == 0) ^ (round / 2 % 2 == 1) {
            "baseline"
        } else {
            "current"
        };
        let k = if which == "baseline" {
            baseline
        } else {
            kernel
        };
        let t0 = Instant::now();
        let out = Command::new(&vmm)
            .arg("--kernel")
            .arg(k)
            .arg("--initrd")
            .arg(&initrd)
            .args(["--cmdline", CMDLINE])
            .stdin(Stdio::null())
            .output()
            .map_err(err)?;
        let wall = t0.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout);
        let uptime: f64 = text
            .lines()
            .find_map(|l| l.split("SILO_GUEST_INIT uptime=").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no init marker from the {which} kernel:\n{text}"))?;
        res[which]["uptime_s"]
            .as_array_mut()
            .unwrap()
            .push(json!(uptime));
        res[which]["wall_s"]
            .as_array_mut()
            .unwrap()
            .push(json!(wall));
    }
    for which in ["baseline", "current"] {
        for k in ["uptime_s", "wall_s"] {
            let mut v: Vec<f64> = res[which][k]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            v.sort_by(f64::total_cmp);
            res[which][format!("{k}_median")] = json!(v[v.len() / 2]);
        }
    }
    Ok(res)
}

fn run_here(
    args: &PmemMemoryArgs,
    kernel: &Path,
    inputs: &Path,
    copies_here: Value,
) -> Result<(), String> {
    let work = crate::scratch_path("silo-pmem-run");
    std::fs::create_dir_all(&work).map_err(err)?;
    let mut results = json!({
        "host": if silo_images::testhost::hardware_kvm_usable() { "hardware KVM" } else { "KVM test host (emulated: compare ratios)" },
        "vms": args.vms, "mib": args.mib, "guest_mem_mib": args.mem_mib,
        "kernel": kernel.display().to_string(),
    });
    if let Some(b) = &args.baseline_kernel {
        eprintln!(
            "[pmem-memory] boot time: baseline vs current kernel, {} boots each",
            args.boots
        );
        results["boot_cost"] = boot_cost(args, kernel, b, inputs)?;
    }
    let idle = variant(args, kernel, inputs, "idle", &work)?;
    let pmem = variant(args, kernel, inputs, "pmem", &work)?;
    let per_tenant = variant(args, kernel, inputs, "pmem-per-tenant", &work)?;
    let copy = variant(args, kernel, inputs, "initramfs", &work)?;
    let ratio = |k: &str| {
        let p = pmem[k].as_f64().unwrap_or(0.0);
        let c = copy[k].as_f64().unwrap_or(0.0);
        if p > 0.0 {
            c / p
        } else {
            0.0
        }
    };
    let idle_mib = idle["per_vm_kib"].as_u64().unwrap_or(0) / 1024;
    results["summary"] = json!(format!(
        "{} VMs reading the same {} MiB: host total {} MiB with pmem vs {} MiB with the files in each \
         initramfs (x{:.2}); per VM {} vs {} MiB (x{:.2}; an idle VM with the image mounted: {idle_mib} MiB); \
         sum PSS {} vs {} MiB (x{:.2})",
        args.vms,
        args.mib,
        pmem["host_total_kib"].as_u64().unwrap_or(0) / 1024,
        copy["host_total_kib"].as_u64().unwrap_or(0) / 1024,
        ratio("host_total_kib"),
        pmem["per_vm_kib"].as_u64().unwrap_or(0) / 1024,
        copy["per_vm_kib"].as_u64().unwrap_or(0) / 1024,
        ratio("per_vm_kib"),
        pmem["sum_pss_kib"].as_u64().unwrap_or(0) / 1024,
        copy["sum_pss_kib"].as_u64().unwrap_or(0) / 1024,
        ratio("sum_pss_kib"),
    ));
    results["ratios_initramfs_over_pmem"] = json!({
        "host_total": ratio("host_total_kib"),
        "per_vm": ratio("per_vm_kib"),
        "sum_pss": ratio("sum_pss_kib"),
        "sum_rss": ratio("sum_rss_kib"),
    });
    let per_vm = |v: &Value| v["per_vm_kib"].as_i64().unwrap_or(0);
    results["reading_cost_per_vm_kib"] = json!({
        "pmem": per_vm(&pmem) - per_vm(&idle),
        "initramfs": per_vm(&copy) - per_vm(&idle),
    });
    let (tenants, line) = crate::pmem_tenants::compare(args.vms, &pmem, &per_tenant, args.tenants);
    results["per_tenant_summary"] = json!(line);
    results["per_tenant_vs_shared"] = tenants;
    if !copies_here.is_null() {
        results["copy_latency"] = copies_here;
    }
    results["idle"] = idle;
    results["pmem"] = pmem;
    results["pmem_per_tenant"] = per_tenant;
    results["initramfs"] = copy;
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::io::stderr().flush();
    finish(args, &results)
}
