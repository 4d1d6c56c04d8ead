//! The per-tenant variant of `silo bench-pmem-memory`: the VMs of each
//! tenant map that tenant's copy of the image, made with the daemon's own
//! code (`silo_daemon::runtime_copies`, as `runtime_sharing = "tenant"`
//! does), against every VM mapping the one image (`runtime_sharing =
//! "host"`); and how long a copy takes (the first boot of each tenant waits
//! for it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use silo_daemon::runtime_copies::{ImageLease, ImageUser, RuntimeCopies, RuntimeSharing};

/// One copy of `image` per tenant, alive as long as this is.
pub struct TenantCopies {
    leases: Vec<ImageLease>,
    /// Milliseconds each copy took.
    pub copy_ms: Vec<f64>,
    _copies: RuntimeCopies,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

impl TenantCopies {
    /// Makes `tenants` copies of `image` in `dir` (emptied first).
    pub fn make(image: &Path, tenants: usize, dir: &Path) -> Result<Self, String> {
        let copies = RuntimeCopies::swept(dir.to_path_buf(), RuntimeSharing::Tenant);
        let rt = runtime()?;
        let mut leases = Vec::new();
        let mut copy_ms = Vec::new();
        for t in 0..tenants.max(1) {
            let tenant = format!("tenant-{t}");
            let started = Instant::now();
            let lease = rt
                .block_on(copies.image_for(image, ImageUser::Tenant(&tenant)))
                .map_err(|e| e.to_string())?;
            copy_ms.push(started.elapsed().as_secs_f64() * 1e3);
            leases.push(lease);
        }
        Ok(Self {
            leases,
            copy_ms,
            _copies: copies,
        })
    }

    /// The image VM `i` maps: VMs go to tenants in turn.
    pub fn image_for_vm(&self, i: usize) -> PathBuf {
        self.leases[i % self.leases.len()].path().to_path_buf()
    }
}

/// Times copying each of `images` `rounds` times into a scratch directory
/// beside the system's temporary directory (this host's filesystem), as a
/// tenant's first boot does.
pub fn copy_latency(images: &[PathBuf], rounds: usize) -> Result<Value, String> {
    let mut out = serde_json::Map::new();
    let dir = crate::scratch_path("silo-bench-copies");
    for image in images {
        let len = std::fs::metadata(image)
            .map_err(|e| format!("{}: {e}", image.display()))?
            .len();
        let mut ms = Vec::new();
        for _ in 0..rounds.max(1) {
            let copies = TenantCopies::make(image, 1, &dir)?;
            ms.extend(copies.copy_ms.iter().copied());
        }
        ms.sort_by(f64::total_cmp);
        out.insert(
            image.display().to_string(),
            json!({"bytes": len, "copy_ms": ms, "copy_ms_median": ms[ms.len() / 2]}),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Value::Object(out))
}

/// The comparison of the shared and per-tenant variants of `vms` VMs, and
/// its summary line.
pub fn compare(vms: usize, shared: &Value, per_tenant: &Value, tenants: usize) -> (Value, String) {
    let total = |v: &Value| v["host_total_kib"].as_i64().unwrap_or(0);
    let extra = total(per_tenant) - total(shared);
    let further = extra / (tenants.max(2) as i64 - 1);
    let ratio = if total(shared) > 0 {
        total(per_tenant) as f64 / total(shared) as f64
    } else {
        0.0
    };
    let line = format!(
        "{vms} VMs of {tenants} tenants: host total {} MiB with one image shared by all \
         (runtime_sharing = \"host\") vs {} MiB with a copy per tenant (the default; x{ratio:.2}): \
         {} MiB more, {} MiB per further tenant; copies took {} ms",
        total(shared) / 1024,
        total(per_tenant) / 1024,
        extra / 1024,
        further / 1024,
        per_tenant["tenant_copy_ms"],
    );
    let v = json!({
        "tenants": tenants,
        "host_total_shared_kib": total(shared),
        "host_total_per_tenant_kib": total(per_tenant),
        "extra_kib": extra,
        "extra_per_further_tenant_kib": further,
        "ratio": ratio,
    });
    (v, line)
}
