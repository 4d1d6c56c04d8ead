//! End to end: `silo-vmm --pmem IMAGE` shares a read-only EROFS image
//! (built by `silo_images::fsimage`) with a real guest kernel, which mounts
//! it with DAX and reads files from it; every write attempt fails or is
//! discarded and the host file keeps its bytes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run_with_kvm, WorkFile};
use silo_images::fsimage::{build_fs_image, GUEST_MOUNT_COMMAND};

/// Content of the large file: not all zeros, not repetitive at 4 KiB.
fn data_bytes() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..(3 << 20) + 123)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn md5_hex(data: &[u8]) -> String {
    // md5sum of the host coreutils, to compare with the guest's busybox.
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("silo-pmem-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

const GUEST_INIT: &str = r#"
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /opt/runtime /opt/second
# libnvdimm registers the pmem disks asynchronously: wait for them.
i=0; while [ ! -e /dev/pmem1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ -e /dev/pmem0 ] || dmesg | grep -iE 'pmem|nd_|nvdimm|virtio|dax' | sed 's/^/DMESG /'
if MOUNT_CMD; then echo MOUNT_OK; else echo MOUNT_FAILED; fi
grep ' /opt/runtime ' /proc/mounts | sed 's/^/MOUNTED /'
echo "HELLO [$(cat /opt/runtime/hello.txt)]"
echo "DATA_MD5 $(md5sum /opt/runtime/lib/data.bin | cut -d' ' -f1)"
echo "SIZE $(cat /sys/block/pmem0/size)"
if echo overwritten > /opt/runtime/hello.txt; then echo FS_WRITE_OK; else echo FS_WRITE_REFUSED; fi
if touch /opt/runtime/new; then echo FS_CREATE_OK; else echo FS_CREATE_REFUSED; fi
mount -t erofs -o ro,dax /dev/pmem1 /opt/second && echo "SECOND [$(cat /opt/second/second.txt)]"
umount /opt/runtime
BEFORE=$(dd if=/dev/pmem0 bs=4096 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
dd if=/dev/zero of=/dev/pmem0 bs=4096 count=1 oflag=direct conv=notrunc,fsync 2>/dev/null
echo "RAW_WRITE_EXIT $?"
AFTER=$(dd if=/dev/pmem0 bs=4096 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
echo "BLOCK0 before=$BEFORE after=$AFTER"
if mount -t erofs -o ro,dax /dev/pmem0 /opt/runtime; then echo "REMOUNT [$(cat /opt/runtime/hello.txt)]"; fi
echo GUEST_DONE
reboot -f
"#;

/// The guest mounts the image with DAX, reads a small and a 3 MiB file with
/// the right content, cannot write through the filesystem, and a raw write
/// to the device is discarded by the VMM (logged) without changing the
/// guest's view or the host file; a second image is `/dev/pmem1`.
#[test]
fn guest_mounts_a_shared_image_with_dax_reads_it_and_cannot_change_it() {
    let kernel = silo_images::kernel::guest_kernel().expect("guest kernel build");
    let dir = tempdir("read");
    let data = data_bytes();
    let tree = dir.join("tree");
    write(&tree, "hello.txt", b"hello from pmem");
    write(&tree, "lib/data.bin", &data);
    let second = dir.join("second");
    write(&second, "second.txt", b"second image");
    build_fs_image(&tree, &dir.join("runtime.img")).expect("image");
    build_fs_image(&second, &dir.join("second.img")).expect("image");
    let image_len = std::fs::metadata(dir.join("runtime.img")).unwrap().len();
    let init = GUEST_INIT.replace("MOUNT_CMD", GUEST_MOUNT_COMMAND);
    let initrd = silo_images::guest::busybox_initramfs(&init).expect("guest initramfs");
    let script = "sha256sum runtime.img > before.sum; \
         silo-vmm --kernel vmlinux --initrd guest.cpio --mem-mib 128 \
         --pmem runtime.img --pmem second.img \
         --cmdline 'console=ttyS0 reboot=k panic=-1 pci=off'; echo VMM_EXIT=$?; \
         sha256sum -c before.sum && echo IMAGE_UNCHANGED";
    let run = run_with_kvm(
        vec![
            ("vmlinux", WorkFile::Host(kernel.vmlinux)),
            ("guest.cpio", WorkFile::Bytes(initrd)),
            ("runtime.img", WorkFile::Host(dir.join("runtime.img"))),
            ("second.img", WorkFile::Host(dir.join("second.img"))),
        ],
        script,
        Duration::from_secs(400),
    );
    let out = &run.output;
    let has = |s: &str| out.contains(s);
    assert!(
        has("MOUNT_OK"),
        "the guest could not mount the image:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("MOUNTED ") && l.contains("erofs") && l.contains("dax")),
        "the image is not mounted with DAX (the pmem device gave no DAX support):\n{out}"
    );
    assert!(has("HELLO [hello from pmem]"), "small file:\n{out}");
    assert!(
        has(&format!("DATA_MD5 {}", md5_hex(&data))),
        "large file content differs:\n{out}"
    );
    let sectors = image_len.div_ceil(2 << 20) * (2 << 20) / 512;
    assert!(
        has(&format!("SIZE {sectors}")),
        "device size is not the image rounded to 2 MiB ({sectors} sectors):\n{out}"
    );
    assert!(has("FS_WRITE_REFUSED") && has("FS_CREATE_REFUSED"), "{out}");
    assert!(has("SECOND [second image]"), "second image:\n{out}");
    // The raw write reached the VMM as MMIO exits, which it discarded.
    assert!(
        has("RAW_WRITE_EXIT 0"),
        "fsync (a flush request) failed:\n{out}"
    );
    let block0 = out
        .lines()
        .find(|l| l.starts_with("BLOCK0 "))
        .unwrap_or_else(|| panic!("no BLOCK0 line:\n{out}"));
    let (before, after) = block0
        .trim_start_matches("BLOCK0 before=")
        .split_once(" after=")
        .unwrap();
    assert_eq!(before.trim(), after.trim(), "the guest changed the image");
    assert!(
        has("guest write to a read-only pmem image discarded"),
        "{out}"
    );
    assert!(has("REMOUNT [hello from pmem]"), "{out}");
    assert!(has("GUEST_DONE") && has("VMM_EXIT=0"), "{out}");
    assert!(has("IMAGE_UNCHANGED"), "the host file changed:\n{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
