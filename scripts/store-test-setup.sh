#!/bin/sh
# Install the external tools the image store interop tests use
# (store-tests/tools.rs): busybox-static, skopeo, umoci, podman.
# Idempotent and quiet; needs root (or sudo) and Debian's apt.
set -eu
missing=""
command -v skopeo >/dev/null 2>&1 || missing="$missing skopeo"
command -v umoci >/dev/null 2>&1 || missing="$missing umoci"
command -v podman >/dev/null 2>&1 || missing="$missing podman"
[ -x /bin/busybox ] || missing="$missing busybox-static"
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq $missing >/dev/null
