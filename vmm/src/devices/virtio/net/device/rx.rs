//! The receive path: frames from the host into the guest's RX buffers,
//! one chain per frame or, with `VIRTIO_NET_F_MRG_RXBUF`, as many chains as
//! the frame needs (the header's `num_buffers` says how many), and RX
//! notifications asked for only while the device waits for buffers.
//!
//! A chain that is read-only, outside guest memory, broken, or too small
//! (for the whole frame without mergeable buffers; for a header with them)
//! is returned unused, and so are the chains taken for the same frame
//! before it (the guest drops a used buffer shorter than a header); the
//! frame waits for the next chains. Chains taken for a frame that does not
//! fit in all the guest has posted are put back, and the device asks to be
//! told when more come.

use std::io::ErrorKind;
use std::time::Instant;

use std::ops::Range;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::VolatileSlice;

use super::{Net, F_MRG_RXBUF, RXQ};
use crate::devices::virtio::net::gather::{fill, scatter, ScatterError};
use crate::devices::virtio::net::offload::{
    check_rx_header, complete_checksum, HeaderFault, RxHeader,
};
use crate::devices::virtio::net::{NetBackend, MAX_CHAINS_PER_EVENT, MAX_FRAME_LEN, NET_HDR_LEN};
use crate::memory::GuestMemory;

/// Why an RX chain could not take (its part of) a frame.
#[derive(Debug, thiserror::Error)]
enum RxFault {
    #[error("{0}")]
    Chain(#[from] ScatterError),
    #[error("{have} bytes of buffer where at least {need} are needed")]
    TooSmall { have: usize, need: usize },
}

/// What became of the held frame in one attempt.
enum Delivery {
    /// It is in the guest's buffers.
    Delivered,
    /// Chains were returned unused; the frame waits for the next ones.
    Refused,
    /// Too few buffers: the chains taken were put back and RX
    /// notifications enabled; `more` if the guest posted buffers meanwhile.
    NoBuffers { more: bool, partial: bool },
}

impl<B: NetBackend> Net<B> {
    /// Delivers frames from the host into the guest's RX buffers, as long
    /// as there are frames, buffers and RX budget (at most
    /// [`MAX_CHAINS_PER_EVENT`] steps, then the device re-kicks itself).
    pub fn process_rx(&mut self) {
        let Some(mem) = self.mem.clone() else { return };
        let off = self.rx_hdr_len();
        // While frames flow the guest need not kick RX for each buffer it
        // posts: notifications are asked for again once buffers run out.
        let _ = self.queues[RXQ].disable_notification(&mem);
        let mut used_any = false;
        let mut chains = Vec::new();
        let mut slices = Vec::new();
        for step in 0.. {
            if step == 2 * MAX_CHAINS_PER_EVENT {
                let _ = self.queue_evts[RXQ].write(1);
                break;
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(0) => break,
                    // A read shorter than its header: nothing to deliver.
                    Ok(n) if n < off => continue,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        crate::guest_fault!(error = %e, "virtio-net: reading the tap failed");
                        break;
                    }
                },
            };
            if self.rx_pending.is_none() {
                if let Err(e) = self.check_rx_frame(off, len) {
                    if matches!(e, HeaderFault::Oversized { .. }) {
                        self.stats.rx_oversized += 1;
                    } else {
                        self.stats.rx_bad_headers += 1;
                    }
                    crate::guest_fault!(error = %e, "virtio-net: frame from the host dropped");
                    continue;
                }
            }
            self.rx_pending = Some(len);
            if !self.rx_charged {
                if let Err(wait) = self.rx_limit.consume((len - off) as u64, Instant::now()) {
                    self.arm_timer(wait);
                    break;
                }
                self.rx_charged = true;
            }
            match self.deliver(&mem, off, len, &mut chains, &mut slices) {
                Delivery::Delivered => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (len - off) as u64;
                    self.rx_pending = None;
                    self.rx_charged = false;
                    used_any = true;
                }
                Delivery::Refused => used_any = true,
                // Buffers came while the device asked for them: go on.
                Delivery::NoBuffers {
                    more: true,
                    partial: false,
                } => continue,
                // More came, but the frame did not fit before: look again
                // on a later turn of the loop, not now.
                Delivery::NoBuffers {
                    more: true,
                    partial: true,
                } => {
                    let _ = self.queue_evts[RXQ].write(1);
                    break;
                }
                // The frame waits here, the next ones in the tap, until the
                // guest posts buffers and kicks RX.
                Delivery::NoBuffers { more: false, .. } => break,
            }
        }
        if used_any {
            self.notify(&mem, RXQ);
        }
    }

    /// Checks a frame just read from the host (`rx_buf[..len]`, its frame
    /// at `off`) and sets the header the guest gets for it; completes its
    /// checksum for a driver that did not take `VIRTIO_NET_F_GUEST_CSUM`.
    fn check_rx_frame(&mut self, off: usize, len: usize) -> Result<(), HeaderFault> {
        if len > self.rx_buf.len() {
            // Truncated by the read: larger than anything the device takes.
            return Err(HeaderFault::Oversized {
                len: len - off,
                max: self.rx_buf.len() - off,
            });
        }
        let frame_len = len - off;
        if off == 0 {
            self.rx_hdr = [0; NET_HDR_LEN];
            return if frame_len > MAX_FRAME_LEN {
                Err(HeaderFault::Oversized {
                    len: frame_len,
                    max: MAX_FRAME_LEN,
                })
            } else {
                Ok(())
            };
        }
        self.rx_hdr = match check_rx_header(&self.rx_buf[..off], frame_len, self.acked)? {
            RxHeader::Pass(hdr) => hdr,
            RxHeader::Complete { start, offset } => {
                complete_checksum(&mut self.rx_buf[off..len], start, offset);
                [0; NET_HDR_LEN]
            }
        };
        Ok(())
    }

    /// Puts the held frame (`rx_buf[off..len]`) behind a header into the
    /// guest's RX chains, each mapped once ([`scatter`]); `chains` (head,
    /// its pieces in `slices`, capacity) and `slices` are scratch space.
    fn deliver<'m>(
        &mut self,
        mem: &'m GuestMemory,
        off: usize,
        len: usize,
        chains: &mut Vec<(u16, Range<usize>)>,
        slices: &mut Vec<VolatileSlice<'m>>,
    ) -> Delivery {
        let frame_len = len - off;
        let need = NET_HDR_LEN + frame_len;
        let mergeable = self.acked & F_MRG_RXBUF != 0;
        chains.clear();
        slices.clear();
        let mut have = 0;
        while have < need {
            let Some(chain) = self.queues[RXQ].pop_descriptor_chain(mem) else {
                // Ask to be told of new buffers from where the guest's ring
                // is now (so the next buffer it posts kicks), then put back
                // what was taken for this frame.
                let more = !matches!(self.queues[RXQ].enable_notification(mem), Ok(false));
                for _ in 0..chains.len() {
                    self.queues[RXQ].go_to_previous_position();
                }
                return Delivery::NoBuffers {
                    more,
                    partial: !chains.is_empty(),
                };
            };
            let head = chain.head_index();
            // Each part of a mergeable frame holds at least a header's
            // worth (so one frame spans at most ~128 chains); without
            // mergeable buffers one chain holds it all.
            let min = if mergeable { NET_HDR_LEN } else { need };
            let first = slices.len();
            let fault = match scatter(mem, chain, slices) {
                Ok(cap) if cap >= min => {
                    have += cap;
                    chains.push((head, first..slices.len()));
                    continue;
                }
                Ok(cap) => RxFault::TooSmall {
                    have: cap,
                    need: min,
                },
                Err(e) => RxFault::from(e),
            };
            self.stats.rx_bad_chains += 1;
            crate::guest_fault!(error = %fault, head, "virtio-net: bad RX descriptor chain returned unused");
            for h in chains.drain(..).map(|(h, _)| h).chain([head]) {
                self.add_used(mem, RXQ, h, 0);
            }
            return Delivery::Refused;
        }
        // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset: as
        // checked; num_buffers (le16): the chains used.
        let mut hdr = self.rx_hdr;
        hdr[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let mut src: [&[u8]; 2] = [&hdr, &self.rx_buf[off..len]];
        for (head, range) in chains.drain(..) {
            let n = fill(&slices[range], &mut src);
            self.queues[RXQ]
                .add_used(mem, head, n as u32)
                .unwrap_or_else(|_| {
                    crate::guest_fault!(head, "virtio-net: used ring update failed");
                });
        }
        Delivery::Delivered
    }
}
