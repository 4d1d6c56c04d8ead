//! One VM's network, by slot number: a network namespace, a veth pair to the
//! host (no bridge) and, once a VM takes the slot, a tap for its guest.
//!
//! Addressing (the same inside every namespace: they never meet):
//! - the tap `tap0` has 169.254.0.1/30, the guest 169.254.0.2;
//! - slot `S` has the /30 at 169.254.128.0 + 4·S (S < 8192, all within
//!   169.254.128.0/17): the host's end `<prefix>v<S>` .1, the namespace's
//!   end `veth0` .2, the namespace's default route through the host's end.
//!
//! Made with `ip` (iproute2) and `nft`, run inside the namespace by a
//! thread that entered it (a child process inherits the thread's
//! namespace).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::NetError;

/// The guest's address, in every namespace.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
/// The tap's address: the guest's gateway.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// The tap's name inside each namespace.
pub const TAP: &str = "tap0";
/// The namespace's end of its veth pair.
pub const NS_VETH: &str = "veth0";
/// Where the slots' /30s are.
pub const SLOT_NET: Ipv4Addr = Ipv4Addr::new(169, 254, 128, 0);
/// The prefix length of [`SLOT_NET`].
pub const SLOT_PREFIX: u8 = 17;
/// Slots that fit in [`SLOT_NET`].
pub const MAX_SLOTS: u32 = 1 << (32 - SLOT_PREFIX - 2);
/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Names of one daemon's slots, from its `name_prefix`.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// `prefix`: 1 to 6 of `[a-z0-9]` (checked by the configuration).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The nft table's name (in the host and in every namespace).
    pub fn table(&self) -> &str {
        &self.prefix
    }

    /// Slot `s`'s namespace name.
    pub fn netns(&self, s: u32) -> String {
        format!("{}-{s}", self.prefix)
    }

    /// Slot `s`'s namespace file.
    pub fn netns_path(&self, s: u32) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns(s))
    }

    /// Slot `s`'s host-side veth.
    pub fn host_veth(&self, s: u32) -> String {
        format!("{}v{s}", self.prefix)
    }

    /// The nft wildcard of every host-side veth.
    pub fn host_veths(&self) -> String {
        format!("{}v*", self.prefix)
    }

    /// The slot a namespace name is of, if it is one of ours.
    pub fn netns_slot(&self, name: &str) -> Option<u32> {
        digits(name.strip_prefix(&self.prefix)?.strip_prefix('-')?)
    }

    /// The slot a host interface name is of, if it is one of ours.
    pub fn veth_slot(&self, name: &str) -> Option<u32> {
        digits(name.strip_prefix(&self.prefix)?.strip_prefix('v')?)
    }
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Slot `s`'s host-side address.
pub fn host_addr(s: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SLOT_NET) + 4 * s + 1)
}

/// Slot `s`'s namespace-side address (what the guest's traffic leaves the
/// namespace as).
pub fn ns_addr(s: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(SLOT_NET) + 4 * s + 2)
}

/// Runs `program args`, feeding it `input`; its stderr in the error.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), NetError> {
    let what = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Command(what(), e.to_string()))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| NetError::Command(what(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Command(what(), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(NetError::Command(
            what(),
            err.trim().chars().take(500).collect(),
        ))
    }
}

/// Runs `program args` and returns its standard output.
pub fn run_output(program: &str, args: &[&str]) -> Result<String, NetError> {
    let what = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Command(what(), e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(NetError::Command(
            what(),
            err.trim().chars().take(500).collect(),
        ))
    }
}

/// Runs `f` on a thread that entered the network namespace at `path` (so
/// do the processes it starts).
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)
            .map_err(|e| NetError::Command(format!("open {}", path.display()), e.to_string()))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::Command(format!("setns {}", path.display()), e.to_string()))?;
        f()
    })
    .join()
    .map_err(|_| NetError::Command("a namespace thread".into(), "panicked".into()))?
}

/// Writes a sysctl of the calling thread's network namespace.
pub(crate) fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value)
        .map_err(|e| NetError::Command(format!("write {path}"), e.to_string()))
}

/// Creates slot `s`: namespace, veth pair, addresses, route, forwarding,
/// IPv6 off, the namespace's ruleset denying everything (`ruleset`), and
/// the guest's tap (up, with the gateway's address, owned by root until a
/// VM takes the slot: [`attach`]). All of it ahead of any VM: a VM's cold
/// start only gives the tap its owner and the function's rules.
pub fn create(names: &Names, s: u32, ruleset: String) -> Result<(), NetError> {
    let ns = names.netns(s);
    let hv = names.host_veth(s);
    let r = (|| {
        run("ip", &["netns", "add", &ns], None)?;
        run(
            "ip",
            &[
                "link", "add", &hv, "type", "veth", "peer", "name", NS_VETH, "netns", &ns,
            ],
            None,
        )?;
        // The host end: IPv6 off before it comes up (no link-local address).
        sysctl(&format!("net.ipv6.conf.{hv}.disable_ipv6"), "1")?;
        let host = format!("addr add {}/30 dev {hv}\nlink set {hv} up\n", host_addr(s));
        run("ip", &["-b", "-"], Some(&host))?;
        let inside = format!(
            "link set lo up\naddr add {}/30 dev {NS_VETH}\nlink set {NS_VETH} up\n\
             route add default via {}\n\
             tuntap add dev {TAP} mode tap\naddr add {GATEWAY_ADDR}/30 dev {TAP}\nlink set {TAP} up\n",
            ns_addr(s),
            host_addr(s)
        );
        in_netns(&names.netns_path(s), move || {
            sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            sysctl("net.ipv4.ip_forward", "1")?;
            run("nft", &["-f", "-"], Some(&ruleset))?;
            run("ip", &["-b", "-"], Some(&inside))
        })
    })();
    if r.is_err() {
        destroy(names, s);
    }
    r
}

/// How the guest's end is made.
#[derive(Debug, Clone)]
pub enum GuestLink {
    /// A persistent tap owned by the VM's uid (the VMM opens it).
    Tap {
        /// The VM's jail uid (and gid).
        uid: u32,
    },
    /// For tests without a guest: a veth whose `tap0` end stands where the
    /// tap would be, its other end `eth0` moved into the named namespace
    /// (`ip netns add NAME`; the stand-in guest configures it).
    Veth {
        /// The stand-in guest's namespace name (checked by the caller).
        peer_netns: String,
    },
}

/// Gives slot `s` (made by [`create`]) its guest link: the tap's owner
/// becomes the VM's uid and gid (two ioctls, no program run), or for tests
/// the tap is replaced by a veth into the stand-in guest's namespace. The
/// rules are the caller's ([`apply`]).
pub fn attach(names: &Names, s: u32, link: &GuestLink) -> Result<(), NetError> {
    match link {
        GuestLink::Tap { uid } => {
            let uid = *uid;
            in_netns(&names.netns_path(s), move || set_tap_owner(TAP, uid))
        }
        GuestLink::Veth { peer_netns } => {
            let batch = format!(
                "link del {TAP}\nlink add {TAP} type veth peer name eth0 netns {peer_netns}\n\
                 addr add {GATEWAY_ADDR}/30 dev {TAP}\nlink set {TAP} up\n"
            );
            in_netns(&names.netns_path(s), move || {
                run("ip", &["-b", "-"], Some(&batch))
            })
        }
    }
}

/// Makes the persistent tap `name` of the calling thread's namespace owned
/// by `uid` (user and group): attaches to it through `/dev/net/tun`, sets
/// `TUNSETOWNER` and `TUNSETGROUP`, and lets go (the tap persists).
fn set_tap_owner(name: &str, uid: u32) -> Result<(), NetError> {
    use std::os::fd::AsRawFd;
    let what = |step: &str| format!("tap {name}: {step}");
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| NetError::Command(what("open /dev/net/tun"), e.to_string()))?;
    // SAFETY: an all-zero ifreq is a valid value of the C struct.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    let fd = tun.as_raw_fd();
    // SAFETY: TUNSETIFF reads and writes the `ifreq` on this stack frame;
    // TUNSETOWNER and TUNSETGROUP take an integer argument, no pointer. The
    // descriptor is ours for the calls.
    unsafe {
        if libc::ioctl(fd, libc::TUNSETIFF, &mut req) < 0 {
            let e = std::io::Error::last_os_error();
            return Err(NetError::Command(what("TUNSETIFF"), e.to_string()));
        }
        if libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid)) < 0 {
            let e = std::io::Error::last_os_error();
            return Err(NetError::Command(what("TUNSETOWNER"), e.to_string()));
        }
        if libc::ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(uid)) < 0 {
            let e = std::io::Error::last_os_error();
            return Err(NetError::Command(what("TUNSETGROUP"), e.to_string()));
        }
    }
    Ok(())
}

/// Replaces slot `s`'s ruleset.
pub fn apply(names: &Names, s: u32, ruleset: String) -> Result<(), NetError> {
    in_netns(&names.netns_path(s), move || {
        run("nft", &["-f", "-"], Some(&ruleset))
    })
}

/// Readies slot `s` for another VM after its VM ended, keeping the
/// namespace, veth pair and tap (none of it is torn down and made again):
/// replaces the namespace's table with `ruleset` (the default policy, fresh
/// counters: no rule or count of the previous function survives), then
/// deletes every conntrack entry (no flow of the previous VM is
/// established for the next), neighbour entry and cached route, and gives
/// the tap back to root; a tap replaced by a test's veth (`relink`) is made
/// again. The caller has read the counters and made the slot inactive.
pub fn reset(names: &Names, s: u32, ruleset: String, relink: bool) -> Result<(), NetError> {
    let mut batch = String::from("neigh flush all\nroute flush cache\n");
    if relink {
        batch.push_str(&format!(
            "link del {TAP}\ntuntap add dev {TAP} mode tap\naddr add {GATEWAY_ADDR}/30 dev {TAP}\n\
             link set {TAP} up\n"
        ));
    }
    in_netns(&names.netns_path(s), move || {
        run("nft", &["-f", "-"], Some(&ruleset))?;
        super::conntrack::flush()?;
        run("ip", &["-b", "-"], Some(&batch))?;
        if !relink {
            set_tap_owner(TAP, 0)?;
        }
        Ok(())
    })
}

/// Removes slot `s` (best effort: what is already gone is fine). The
/// namespace's tap, veth end and rules go with it; deleting the host end
/// first ends the pair even while a process still holds the namespace.
pub fn destroy(names: &Names, s: u32) {
    let _ = run("ip", &["link", "del", &names.host_veth(s)], None);
    let _ = run("ip", &["netns", "delete", &names.netns(s)], None);
}
