//! cairn: rootless overlay filesystems and containers.
