//! End to end: silo boots a function VM (our VMM, our guest kernel, our
//! agent as PID 1, a function built on the official `lambda_runtime` crate),
//! the host sends invocations over our virtio-vsock device and gets the
//! right answers; the function sees its tenant id; /tmp and memory persist
//! across invokes of the same VM; a crash, a timeout and a stdout flood are
//! reported and do not take the host side down.

mod common;

use std::time::Duration;

use common::{run_with_kvm, WorkFile};
use serde_json::Value;

fn counter_zip() -> Vec<u8> {
    let bin = silo_images::artifacts::counter_function().expect("build the counter function");
    let data = std::fs::read(bin).unwrap();
    silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &data)])
}

fn results(output: &str, run: &str) -> Vec<Value> {
    output
        .lines()
        .skip_while(|l| !l.contains(&format!("BEGIN {run}")))
        .take_while(|l| !l.contains(&format!("END {run}")))
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v["event"] == "result")
        .collect()
}

#[test]
fn function_vm_serves_a_tenant_and_survives_faults() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel");
    let agent = silo_images::artifacts::guest_agent().expect("static guest agent");
    let script = r#"
echo "BEGIN state"
silo run --kernel vmlinux --agent agent --zip counter.zip --tenant tenant-A \
  --payload '{}' --payload '{}' --payload '{"action":"crash"}' --payload '{}' --payload '{"action":"fail"}'
echo "END state rc=$?"
echo "BEGIN faults"
silo run --kernel vmlinux --agent agent --zip counter.zip --tenant tenant-B --timeout-s 4 \
  --payload '{"action":"sleep","ms":30000}' --payload '{}' --payload '{"action":"flood","lines":10000}' --payload '{}'
echo "END faults rc=$?"
ls /tmp/silo-run | grep -c . || true
"#;
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("agent", WorkFile::Host(agent)),
            ("counter.zip", WorkFile::Bytes(counter_zip())),
        ],
        script,
        Duration::from_secs(600),
    );
    let out = &run.output;
    assert!(
        out.contains("END state rc=0"),
        "first VM run failed:\n{out}"
    );
    assert!(
        out.contains("END faults rc=0"),
        "second VM run failed:\n{out}"
    );

    let r = results(out, "state");
    assert_eq!(r.len(), 5, "{out}");
    assert_eq!(
        r[0]["payload"]["tenant_id"], "tenant-A",
        "the function sees its tenant"
    );
    assert_eq!(r[0]["payload"]["count"], 1);
    assert_eq!(r[1]["payload"]["count"], 2, "/tmp persists across invokes");
    assert_eq!(
        r[1]["payload"]["in_memory_count"], 2,
        "memory persists across invokes"
    );
    assert_eq!(r[2]["error_type"], "Runtime.ExitError");
    assert_eq!(
        r[3]["payload"]["count"], 3,
        "/tmp survives a runtime crash in the same VM"
    );
    assert_eq!(
        r[3]["payload"]["in_memory_count"], 1,
        "the runtime restarted"
    );
    assert_eq!(r[4]["ok"], false);
    assert!(r[4]["error_message"]
        .as_str()
        .unwrap()
        .contains("asked to fail"));

    let r = results(out, "faults");
    assert_eq!(r.len(), 4, "{out}");
    assert_eq!(r[0]["error_type"], "Sandbox.Timedout");
    assert_eq!(r[1]["payload"]["tenant_id"], "tenant-B");
    assert_eq!(
        r[2]["ok"], true,
        "a stdout flood still returns its result: {}",
        r[2]
    );
    assert!(r[2]["log_tail_bytes"].as_u64().unwrap() <= 4096);
    assert_eq!(r[3]["ok"], true);
    // Both VMs cleaned up their sockets and images.
    assert!(
        out.trim_end().ends_with('0'),
        "leftovers in /tmp/silo-run:\n{out}"
    );
}
