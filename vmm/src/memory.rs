//! Guest memory: layout constants and creation (anonymous, MAP_NORESERVE).

/// Guest physical memory as the VMM maps it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
