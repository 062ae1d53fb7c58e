#!/usr/bin/env bash
# Every test of cairn, as CI runs it: installs what is missing, checks
# formatting and lints, runs the unit and integration tests (real FUSE and
# kernel overlayfs mounts, inside a private mount namespace so none can
# outlive the run, under a watchdog so none can hang it), then pjdfstest.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=0
scripts/setup.sh
scripts/store-test-setup.sh
scripts/podman-test-setup.sh
scripts/run-test-setup.sh
scripts/debootstrap-image.sh > /dev/null
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo build --release --quiet --bins
scripts/with-watchdog.sh 2700 unshare -m --propagation private cargo test --no-fail-fast
scripts/with-watchdog.sh 1200 scripts/pjdfstest.sh
