//! Guest initramfs assembly.
