//! `bench-idle-memory`'s `firecracker` variant: Firecracker booted with the
//! same kernel, initramfs and runtime image, its balloon with free page
//! reporting.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use silo_daemon::vm_env::VmSpec;
use silo_proto::{Message, Outcome};

use super::{e, invoke_msg, Vm};

/// silo's default command line; Firecracker gets it too.
const CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check quiet pty.legacy_count=0";

/// Boots Firecracker with the same kernel, initramfs and runtime image,
/// its balloon with free page reporting, and answers one invoke.
pub(super) async fn boot_firecracker(
    fc: &Path,
    spec: &VmSpec,
    dir: &Path,
    n: usize,
) -> Result<Vm, String> {
    use silo_proto::asynchronous::{read_message, write_message};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(e)?;
    let uds = dir.join("vsock");
    let listener =
        tokio::net::UnixListener::bind(format!("{}_{}", uds.display(), silo_proto::AGENT_PORT))
            .map_err(|x| format!("agent socket: {x}"))?;
    let mut config = json!({
        "boot-source": {
            "kernel_image_path": spec.kernel,
            "initrd_path": spec.initrd,
            "boot_args": CMDLINE,
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": spec.mem_mib },
        "vsock": { "guest_cid": 3, "uds_path": uds },
        "balloon": {
            "amount_mib": 0,
            "deflate_on_oom": false,
            "stats_polling_interval_s": 0,
            "free_page_reporting": true,
        },
    });
    if let Some(img) = &spec.pmem {
        config["pmem"] =
            json!([{ "id": "rt", "path_on_host": img, "root_device": false, "read_only": true }]);
    }
    let path = dir.join("fc.json");
    std::fs::write(&path, config.to_string()).map_err(e)?;
    let mut child = tokio::process::Command::new(fc)
        .args(["--no-api", "--config-file"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|x| format!("{}: {x}", fc.display()))?;
    let limit = Duration::from_secs(300);
    let (mut conn, _) = tokio::time::timeout(limit, listener.accept())
        .await
        .map_err(|_| "Firecracker VM: the agent never connected".to_string())?
        .map_err(e)?;
    loop {
        let msg = tokio::time::timeout(limit, read_message(&mut conn))
            .await
            .map_err(|_| "Firecracker VM: no hello".to_string())?
            .map_err(e)?;
        if matches!(msg, Message::Hello { .. }) {
            break;
        }
    }
    write_message(&mut conn, &invoke_msg(n)).await.map_err(e)?;
    loop {
        match tokio::time::timeout(limit, read_message(&mut conn))
            .await
            .map_err(|_| "Firecracker VM: no answer".to_string())?
            .map_err(e)?
        {
            Message::Result {
                outcome: Outcome::Ok(_),
                ..
            } => break,
            Message::Result { outcome, .. } => {
                let _ = child.kill().await;
                return Err(format!("Firecracker VM: first invoke failed: {outcome:?}"));
            }
            _ => continue,
        }
    }
    Ok(Vm::Firecracker {
        child,
        _conn: conn,
        dir: dir.to_path_buf(),
    })
}
