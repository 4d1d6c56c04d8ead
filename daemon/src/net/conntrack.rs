//! Flushes the connection-tracking table of the calling thread's network
//! namespace through ctnetlink (one `IPCTNL_MSG_CT_DELETE` request without
//! a tuple, as `conntrack -F` sends): a recycled slot keeps no flow of the
//! VM that held it before. Needs the kernel's `nf_conntrack_netlink`.

use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use super::NetError;

/// `IPCTNL_MSG_CT_DELETE` of `linux/netfilter/nfnetlink_conntrack.h`
/// (libc does not name it).
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// `nlmsghdr` (16 bytes) then `nfgenmsg` (4 bytes).
const REQUEST_LEN: usize = 20;

fn err(step: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Command(format!("conntrack flush: {step}"), e.to_string())
}

/// The flush request: every entry of every family (`nfgen_family`
/// `AF_UNSPEC`, version 0), acknowledged.
fn request(seq: u32) -> [u8; REQUEST_LEN] {
    let mut m = [0u8; REQUEST_LEN];
    let kind = ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_DELETE;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    m[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // Port id 0: the kernel's. nfgenmsg: family, version, resource id (BE).
    m[16] = libc::AF_UNSPEC as u8;
    m[17] = libc::NFNETLINK_V0 as u8;
    m
}

/// The kernel's answer to request `seq`: `Ok` for an acknowledgement with
/// error 0, the errno otherwise.
fn parse_ack(buf: &[u8], seq: u32) -> Result<(), NetError> {
    if buf.len() < 20 {
        return Err(err("answer", format!("{} bytes", buf.len())));
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    let got_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if kind != libc::NLMSG_ERROR as u16 || got_seq != seq {
        return Err(err("answer", format!("type {kind}, sequence {got_seq}")));
    }
    match i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]) {
        0 => Ok(()),
        e => Err(err(
            "kernel",
            std::io::Error::from_raw_os_error(e.saturating_neg()),
        )),
    }
}

/// Deletes every conntrack entry of the calling thread's namespace (run it
/// inside the slot's namespace: [`super::slot::in_netns`]).
pub fn flush() -> Result<(), NetError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| err("socket", e))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| err("bind", e))?;
    let seq = 1;
    sendto(
        fd.as_raw_fd(),
        &request(seq),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| err("send", e))?;
    let mut buf = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| err("receive", e))?;
    parse_ack(&buf[..n], seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_and_its_acknowledgement_are_laid_out_as_netlink_says() {
        let r = request(7);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 20);
        // NFNL_SUBSYS_CTNETLINK (1) << 8 | IPCTNL_MSG_CT_DELETE (2).
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 0x0102);
        // NLM_F_REQUEST | NLM_F_ACK.
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x5);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 7);
        assert_eq!(&r[16..], &[0, 0, 0, 0]);
        let mut ack = [0u8; 36];
        ack[4..6].copy_from_slice(&2u16.to_ne_bytes());
        ack[8..12].copy_from_slice(&7u32.to_ne_bytes());
        assert!(parse_ack(&ack, 7).is_ok());
        assert!(parse_ack(&ack, 8).is_err());
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert!(parse_ack(&ack, 7).is_err());
    }
}
