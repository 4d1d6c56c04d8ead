//! Tests of the VM backend: image fit checks, who shares a runtime image,
//! and run directory names.

use super::*;

#[test]
fn an_initramfs_too_big_for_the_memory_is_refused_saying_what_to_do() {
    // python3.11's (34 MiB) fits the default 128 MiB; nodejs22.x's
    // (110 MiB) does not fit 328 (measured: it does not boot there).
    assert!(check_initramfs_fits("python3.11", 35_500_000, 128).is_ok());
    let e = check_initramfs_fits("nodejs22.x", 115_000_000, 328).unwrap_err();
    let text = e.to_string();
    for part in [
        "MemorySize 328",
        "nodejs22.x",
        "110 MiB",
        "354 or more",
        "pmem",
    ] {
        assert!(text.contains(part), "{text} does not say {part}");
    }
    assert!(check_initramfs_fits("nodejs22.x", 115_000_000, 354).is_ok());
}
/// A pooled VM shares its image with no one, even before it is bound;
/// a tenant's VMs with that tenant's; a function without tenants' VMs
/// with that function's.
#[test]
fn who_shares_a_vms_runtime_image() {
    let function = FunctionKey {
        name: "f".into(),
        version: "f@1".into(),
    };
    let bound = Binding {
        function: function.clone(),
        tenant: Some(TenantId::parse("tenant-A").unwrap()),
    };
    let unbound = Binding {
        function,
        tenant: None,
    };
    assert!(matches!(
        image_user(&bound, false),
        ImageUser::Tenant("tenant-A")
    ));
    assert!(matches!(
        image_user(&unbound, false),
        ImageUser::Function("f")
    ));
    assert!(matches!(image_user(&unbound, true), ImageUser::Private));
    assert!(matches!(image_user(&bound, true), ImageUser::Private));
}
use crate::vm_env::new_vm_dir;
use silo_scheduler::{FunctionKey, TenantId};

/// A tenant id never becomes part of a path: the VM's initramfs and run
/// directory of a binding come from the function version and counters.
#[test]
fn run_directory_names_never_contain_the_tenant() {
    let run_dir = PathBuf::from("/var/lib/silo/run");
    let backend = VmBackend::new(
        "/k".into(),
        run_dir.clone(),
        Duration::from_secs(1),
        JailMode::Insecure,
    );
    let version = "counter@0b4c".to_string();
    backend.functions.lock().unwrap().insert(
        version.clone(),
        Arc::new(FunctionImage {
            config: AgentConfig::default(),
            initrd: run_dir.join(format!("counter-{version}.cpio")),
            pmem: None,
            runtime: "provided.al2023".into(),
            logging: Default::default(),
            tenant_role: None,
        }),
    );
    for tenant in ["../x", "tenant A", "/etc/passwd", "a/../../b", "..", "x"] {
        let binding = Binding {
            function: FunctionKey {
                name: "counter".into(),
                version: version.clone(),
            },
            tenant: Some(TenantId::parse(tenant).unwrap()),
        };
        let spec = backend.spec_for(&binding).unwrap();
        let dir = new_vm_dir(&run_dir);
        for p in [&spec.initrd, &dir] {
            assert_eq!(p.parent(), Some(run_dir.as_path()), "{}", p.display());
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(!name.contains(tenant), "{name} holds tenant {tenant:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-@._".contains(&b)),
                "{name}"
            );
        }
        let name = dir.file_name().unwrap().to_str().unwrap();
        let rest = name.strip_prefix("vm-").unwrap();
        assert!(
            rest.bytes().all(|b| b.is_ascii_digit() || b == b'-'),
            "{name}"
        );
    }
}
