//! PID 1 duties: filesystems, loopback, the guest clock, and ending the VM.

use std::os::fd::AsRawFd;

use nix::mount::{mount, MsFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use nix::time::{clock_gettime, ClockId};

/// Kernel uptime (CLOCK_BOOTTIME) in nanoseconds.
pub fn uptime_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount {fstype} on {target}: {e}")),
    }
}

/// Mounts /proc, /sys and /dev and brings up loopback.
pub fn setup() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    loopback_up().map_err(|e| format!("bringing up lo: {e}"))
}

/// Mounts a size-limited tmpfs on /tmp.
pub fn mount_tmp(mib: u32) -> Result<(), String> {
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("size={mib}m,mode=1777")),
    )
}

/// The shared runtime image's device (virtio-pmem), when the VM has one.
const RUNTIME_DEVICE: &str = "/dev/pmem0";
/// How long the pmem disk may take to appear once its device is probed.
const RUNTIME_DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The virtio device id of pmem, as sysfs shows it.
const VIRTIO_ID_PMEM: &str = "0x001b";

/// Whether the VM has a virtio-pmem device (sysfs lists each virtio device
/// with its id; the VMM declares them on the command line).
fn has_virtio_pmem() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    dir.flatten().any(|d| {
        std::fs::read_to_string(d.path().join("device")).is_ok_and(|id| id.trim() == VIRTIO_ID_PMEM)
    })
}

/// Mounts the managed runtime's shared image read-only at `/rt`, with DAX
/// (the guest maps the host's page cache of the image instead of copying it
/// into its own page cache), when the VM has one; a VM without it has the
/// runtime unpacked at `/rt` from its initramfs, or none.
pub fn mount_runtime_image() -> Result<(), String> {
    if !has_virtio_pmem() {
        return Ok(());
    }
    // The virtio device is probed during boot, but libnvdimm registers its
    // disk asynchronously: /dev/pmem0 may come a little after init starts.
    let started = std::time::Instant::now();
    while !std::path::Path::new(RUNTIME_DEVICE).exists() {
        if started.elapsed() > RUNTIME_DEVICE_WAIT {
            return Err(format!(
                "the VM has a virtio-pmem device but no {RUNTIME_DEVICE} after {RUNTIME_DEVICE_WAIT:?}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let target = crate::runtime::GUEST_RUNTIME_ROOT;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    let mut errors = Vec::new();
    for fstype in ["erofs", "ext4"] {
        match mount(
            Some(RUNTIME_DEVICE),
            target,
            Some(fstype),
            flags,
            Some("dax"),
        ) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(format!("{fstype}: {e}")),
        }
    }
    Err(format!(
        "cannot mount {RUNTIME_DEVICE} read-only with DAX on {target} ({})",
        errors.join(", ")
    ))
}

/// Sets IFF_UP on `lo`; Linux then assigns 127.0.0.1 to it.
fn loopback_up() -> Result<(), String> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| e.to_string())?;
    let mut req: libc::ifreq = unsafe_zeroed_ifreq();
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the `ifreq` we own and
    // pass by pointer; the socket fd is valid for the duration of the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

fn unsafe_zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct of integers, arrays and a union of
    // them, for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Ends the VM: sync and reboot (the VMM turns the reset into the VM's end).
pub fn reboot() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Should not be reached; if it is, do not return to a dead init.
    loop {
        std::thread::park();
    }
}
