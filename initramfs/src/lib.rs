//! Guest initramfs assembly: a newc cpio writer, Lambda-style function
//! packages (zip), and the image a function's VM boots from.

pub mod image;
pub mod newc;
pub mod package;
