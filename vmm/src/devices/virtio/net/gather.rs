//! A TX chain taken apart in one walk ([`gather`]): the guest's
//! virtio-net header copied out and checked by the device, the frame's
//! pieces then copied into the device's bounce buffer ([`copy_frame`]),
//! which is what reaches the tap: no system call points into guest memory
//! (`../shared/DEVICE-GUIDE.md`: `unsafe` stays in the tap's ioctls). And
//! an RX chain mapped once ([`scatter`]) and filled ([`fill`]).

use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::NET_HDR_LEN;
use crate::memory::GuestMemory;

/// The most pieces of guest memory one frame may come in. A chain has at
/// most [`super::QUEUE_SIZE`] descriptors, each split at most at the
/// boundaries of guest RAM regions.
pub const MAX_PARTS: usize = 1023;

/// Why a TX chain could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    /// A chain that loops, runs past the queue or has no descriptor
    /// (virtio-queue's iterator stops silently there).
    #[error("a chain that loops, runs past the queue or has no descriptor")]
    Broken,
    /// A descriptor the device may write: not a TX buffer.
    #[error("a device-writable descriptor in a TX chain")]
    Writable,
    /// A descriptor outside guest RAM.
    #[error("a descriptor outside guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// A slice of a descriptor that vm-memory refused (cannot happen for
    /// the lengths used; kept typed, not unwrapped).
    #[error("a descriptor's slice refused: {0}")]
    Slice(#[from] vm_memory::VolatileMemoryError),
    /// Shorter than a virtio-net header.
    #[error("{0} bytes: shorter than a virtio-net header")]
    Short(usize),
    /// More pieces than a frame may come in.
    #[error("a frame in more than {MAX_PARTS} pieces of guest memory")]
    TooManyParts,
}

/// A TX chain taken apart: the guest's header (copied), the frame's
/// pieces in guest memory after it, and the frame's length.
pub struct Gathered<'m> {
    /// The guest's `virtio_net_hdr_v1`, copied out once.
    pub hdr: [u8; NET_HDR_LEN],
    /// The frame's bytes after the header, where they lie in guest memory.
    pub parts: Vec<VolatileSlice<'m>>,
    /// The frame's length (the pieces' total).
    pub frame_len: usize,
}

/// Takes a TX chain apart in one walk: it must end where it says it ends,
/// every descriptor must be device-readable and inside guest RAM; the
/// first [`NET_HDR_LEN`] bytes (in however many descriptors) are copied
/// out as the header, the rest stays where it is.
pub fn gather<'m>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<&'m GuestMemory>,
) -> Result<Gathered<'m>, GatherError> {
    let mut hdr = [0u8; NET_HDR_LEN];
    let mut hdr_have = 0;
    let mut parts = Vec::new();
    let mut frame_len = 0usize;
    let mut ended = false;
    for desc in chain {
        ended = !desc.has_next();
        if desc.is_write_only() {
            return Err(GatherError::Writable);
        }
        for slice in mem.get_slices(GuestAddress(desc.addr().0), desc.len() as usize) {
            let mut slice = slice?;
            if hdr_have < NET_HDR_LEN {
                let n = (NET_HDR_LEN - hdr_have).min(slice.len());
                slice
                    .subslice(0, n)?
                    .copy_to(&mut hdr[hdr_have..hdr_have + n]);
                hdr_have += n;
                slice = slice.offset(n)?;
            }
            if slice.is_empty() {
                continue;
            }
            if parts.len() == MAX_PARTS {
                return Err(GatherError::TooManyParts);
            }
            frame_len += slice.len();
            parts.push(slice);
        }
    }
    if !ended {
        return Err(GatherError::Broken);
    }
    if hdr_have < NET_HDR_LEN {
        return Err(GatherError::Short(hdr_have));
    }
    Ok(Gathered {
        hdr,
        parts,
        frame_len,
    })
}

/// Why an RX chain cannot take a frame.
#[derive(Debug, thiserror::Error)]
pub enum ScatterError {
    /// A chain that loops, runs past the queue or has no descriptor.
    #[error("a chain that loops, runs past the queue or has no descriptor")]
    Broken,
    /// A descriptor the device may only read: not an RX buffer.
    #[error("a device-readable descriptor in an RX chain")]
    ReadOnly,
    /// A descriptor outside guest RAM.
    #[error("a descriptor outside guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Maps an RX chain in one walk: it must end where it says it ends and
/// every descriptor must be device-writable and inside guest RAM. Appends
/// its pieces of guest memory to `out` (nothing on error) and returns its
/// capacity in bytes.
pub fn scatter<'m>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<&'m GuestMemory>,
    out: &mut Vec<VolatileSlice<'m>>,
) -> Result<usize, ScatterError> {
    let start = out.len();
    let mut cap = 0usize;
    let mut ended = false;
    let walk = (|| {
        for desc in chain {
            ended = !desc.has_next();
            if !desc.is_write_only() {
                return Err(ScatterError::ReadOnly);
            }
            for slice in mem.get_slices(GuestAddress(desc.addr().0), desc.len() as usize) {
                let slice = slice?;
                cap += slice.len();
                out.push(slice);
            }
        }
        if ended {
            Ok(cap)
        } else {
            Err(ScatterError::Broken)
        }
    })();
    if walk.is_err() {
        out.truncate(start);
    }
    walk
}

/// Copies `src` (its parts in order) into `dst` from its start, as far as
/// `dst` holds; advances each part past what was copied. Returns the bytes
/// copied.
pub fn fill(dst: &[VolatileSlice<'_>], src: &mut [&[u8]]) -> usize {
    let mut copied = 0;
    for d in dst {
        let mut at = 0;
        for part in src.iter_mut() {
            let n = part.len().min(d.len() - at);
            if n == 0 {
                continue;
            }
            // In range by construction: `at + n <= d.len()`.
            if let Ok(piece) = d.subslice(at, n) {
                piece.copy_from(&part[..n]);
            }
            *part = &part[n..];
            at += n;
        }
        copied += at;
    }
    copied
}

/// Copies a gathered frame into `buf`: `hdr` first if given (the device's
/// checked copy), then the frame's pieces in order, as far as `buf` holds.
/// Returns the bytes copied.
pub fn copy_frame(
    hdr: Option<&[u8; NET_HDR_LEN]>,
    parts: &[VolatileSlice<'_>],
    buf: &mut [u8],
) -> usize {
    let mut at = 0;
    if let Some(h) = hdr {
        let n = h.len().min(buf.len());
        buf[..n].copy_from_slice(&h[..n]);
        at = n;
    }
    for p in parts {
        let n = p.len().min(buf.len() - at);
        if n == 0 {
            break;
        }
        // In range by construction: `n <= p.len()`.
        if let Ok(piece) = p.subslice(0, n) {
            piece.copy_to(&mut buf[at..at + n]);
        }
        at += n;
    }
    at
}
