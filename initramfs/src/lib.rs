//! Guest initramfs assembly: a newc cpio writer, and the builder that packs
//! the guest agent and a function package into the image a VM boots from.

pub mod newc;
