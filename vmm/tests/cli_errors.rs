//! `silo-vmm` on bad input: a clear error naming the file or value, exit
//! code 1, and nothing left running. These run on any host.

use std::process::Command;

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_silo-vmm"))
        .args(args)
        .env("SILO_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp(name: &str, data: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("silo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn kernel_or_pvm_refusal(args: &[&str], expect: &str) {
    let (code, err) = vmm(args);
    assert_eq!(code, 1, "{err}");
    // On a PVM host the kernel check comes first; either way the message is specific.
    assert!(err.contains(expect) || err.contains("PVM"), "{err}");
}

#[test]
fn missing_kernel_file_is_named() {
    let (code, err) = vmm(&["--kernel", "/nonexistent/vmlinux", "--allow-pvm"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/vmlinux"), "{err}");
}

#[test]
fn a_text_file_is_not_a_kernel() {
    let p = temp("notes.txt", b"hello");
    let (code, err) = vmm(&["--kernel", p.to_str().unwrap(), "--allow-pvm"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("notes.txt") && err.contains("not a Linux kernel"),
        "{err}"
    );
}

#[test]
fn truncated_kernel_is_named() {
    let p = temp("vmlinux-cut", b"\x7fELF\x02\x01\x01\x00\x00");
    let (code, err) = vmm(&["--kernel", p.to_str().unwrap(), "--allow-pvm"]);
    assert_eq!(code, 1);
    assert!(err.contains("vmlinux-cut"), "{err}");
}

#[test]
fn memory_and_vcpus_out_of_range_are_named() {
    let p = temp("k", b"x");
    let (code, err) = vmm(&[
        "--kernel",
        p.to_str().unwrap(),
        "--mem-mib",
        "4",
        "--allow-pvm",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("4 MiB"), "{err}");
    let (code, err) = vmm(&[
        "--kernel",
        p.to_str().unwrap(),
        "--vcpus",
        "0",
        "--allow-pvm",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("vCPU count 0"), "{err}");
    let (code, err) = vmm(&[
        "--kernel",
        p.to_str().unwrap(),
        "--vsock-cid",
        "2",
        "--vsock-uds",
        "/tmp/x",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--vsock-cid 2"), "{err}");
}

#[test]
fn initrd_larger_than_memory_is_named() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel");
    let big = temp("big.cpio", b"");
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    kernel_or_pvm_refusal(
        &[
            "--kernel",
            kernel.vmlinux.to_str().unwrap(),
            "--initrd",
            big.to_str().unwrap(),
            "--mem-mib",
            "48",
            "--allow-pvm",
        ],
        "big.cpio",
    );
}

#[test]
fn pvm_host_refuses_standard_kernels_with_a_clear_message() {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists()
        && !std::path::Path::new("/sys/module/kvm_intel").exists()
        && !std::path::Path::new("/sys/module/kvm_amd").exists();
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel");
    let (code, err) = vmm(&[
        "--kernel",
        kernel.vmlinux.to_str().unwrap(),
        "--serial",
        "off",
    ]);
    if pvm {
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("PVM") && err.contains("CONFIG_PVM_GUEST"),
            "{err}"
        );
    } else {
        // Hardware KVM: the same command boots (and, with no initrd, the
        // kernel panics and reboots: panic=-1), ending cleanly.
        assert_eq!(code, 0, "{err}");
    }
}

/// `SILO_SECCOMP=off` is the debugging switch of a VMM started by hand; a
/// VMM started by the daemon (`--managed`) ignores it and says so.
#[test]
fn managed_vmm_refuses_the_seccomp_off_switch() {
    let run = |managed: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_silo-vmm"));
        cmd.args(["--kernel", "/nonexistent/vmlinux", "--allow-pvm"])
            .env("SILO_LOG", "warn")
            .env("SILO_SECCOMP", "off");
        if managed {
            cmd.arg("--managed");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(true);
    assert!(
        err.contains("SILO_SECCOMP=off ignored") && err.contains("--managed"),
        "{err}"
    );
    assert!(!run(false).contains("ignored"));
}

#[test]
fn bad_pmem_images_are_named_before_anything_boots() {
    let kernel = temp("vmlinux-pmem", b"not a kernel");
    let empty = temp("empty.img", b"");
    let dir = empty.parent().unwrap().to_path_buf();
    let missing = dir.join("missing.img");
    for (image, expect) in [
        (missing.as_path(), "cannot open it"),
        (empty.as_path(), "the file is empty"),
        (dir.as_path(), "not a regular file"),
    ] {
        let (code, err) = vmm(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--pmem",
            image.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("pmem image {}", image.display())) && err.contains(expect),
            "{err}"
        );
    }
    let img = temp("ok.img", b"x");
    let mut args = vec!["--kernel", kernel.to_str().unwrap()];
    for _ in 0..9 {
        args.extend(["--pmem", img.to_str().unwrap()]);
    }
    let (code, err) = vmm(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("9 pmem images") && err.contains("at most 8"),
        "{err}"
    );
}
