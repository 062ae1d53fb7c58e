//! cairn: rootless overlay filesystems and containers.
pub mod store;
