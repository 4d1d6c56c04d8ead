//! The host side of virtio-net: a tap interface that already exists (the
//! daemon creates it, persistent, owned by the VM's uid, in the VM's network
//! namespace). The VMM opens `/dev/net/tun` and attaches to it with
//! `TUNSETIFF` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`: Ethernet frames
//! behind a 12-byte virtio-net header, `TUNSETVNETHDRSZ`, so that the
//! guest's checksum and segmentation offloads reach the host's stack;
//! `TUNSETOFFLOAD` [`TUN_OFFLOADS`]: frames towards the guest may come with
//! their checksum left undone and as TCP segments of up to 64 KiB, which
//! the device checks and, for a driver that did not take them, completes
//! or drops, see [`super::offload`]) while it can still open files, before
//! the jail's root change and the seccomp filters (so no ioctl is needed
//! after start, whatever the driver negotiates); the file keeps the
//! namespace it was opened in. Each frame moves in exactly one `read` or
//! `write`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use super::offload::TUN_OFFLOADS;
use super::{NetBackend, NetError};

/// Longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// An open, non-blocking tap file attached to one interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// A tap opened before the jail's root change ([`preopen`]), waiting for
/// the builder.
static PREOPENED: Mutex<Option<Tap>> = Mutex::new(None);

/// Checks an interface name: 1 to 15 bytes, no `/`, NUL or whitespace.
pub fn check_name(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(NetError::TapName(name.escape_debug().to_string()))
    }
}

impl Tap {
    /// Opens `/dev/net/tun` and attaches to the existing tap `name`
    /// (`TUNSETIFF` with `IFF_TAP | IFF_NO_PI`), non-blocking. An interface
    /// missing from this network namespace is an error: `TUNSETIFF` would
    /// create it (the VMM is still root here), down and unconfigured.
    pub fn open(name: &str) -> Result<Self, NetError> {
        check_name(name)?;
        let cname = std::ffi::CString::new(name).map_err(|_| NetError::TapName(name.into()))?;
        // SAFETY: a NUL-terminated string that outlives the call; the
        // function only reads it.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(NetError::NoSuchTap(name.to_string()));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;
        // SAFETY: an all-zero ifreq is a valid value of the C struct.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        let attach_err = || NetError::Attach {
            name: name.to_string(),
            source: std::io::Error::last_os_error(),
        };
        let fd = file.as_raw_fd();
        let hdr_len = super::NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, TUNSETVNETHDRSZ
        // reads one int, both on this stack frame for the call;
        // TUNSETOFFLOAD takes its flags by value. The fd is ours.
        unsafe {
            if libc::ioctl(fd, libc::TUNSETIFF, &mut req) < 0 {
                return Err(attach_err());
            }
            if libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len) < 0 {
                return Err(attach_err());
            }
            if libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(TUN_OFFLOADS)) < 0 {
                return Err(attach_err());
            }
        }
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Opens the tap `name` now and keeps it for [`take_preopened`]: called by
/// the jail in the VM's network namespace, before it changes root (the
/// jail has no `/dev/net/tun`) and drops privileges.
pub fn preopen(name: &str) -> Result<(), NetError> {
    let tap = Tap::open(name)?;
    *PREOPENED.lock().unwrap_or_else(|e| e.into_inner()) = Some(tap);
    Ok(())
}

/// The tap [`preopen`] opened for `name`, if any.
pub fn take_preopened(name: &str) -> Option<Tap> {
    let mut kept = PREOPENED.lock().unwrap_or_else(|e| e.into_inner());
    match kept.take() {
        Some(t) if t.name == name => Some(t),
        other => {
            *kept = other;
            None
        }
    }
}

impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
    fn vnet_hdr(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_system_call() {
        for bad in ["", "a/b", "sixteen-chars-xx", "a b", "x:1", "tap\0"] {
            assert!(
                matches!(Tap::open(bad), Err(NetError::TapName(_))),
                "{bad:?}"
            );
        }
        assert!(check_name("tap0").is_ok());
        assert!(check_name("fifteen-chars-x").is_ok());
    }
}
