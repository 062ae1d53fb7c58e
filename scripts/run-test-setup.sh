#!/usr/bin/env bash
# Installs what the container tests (run-tests/run.rs) need on a fresh
# Debian machine, as root: busybox-static (the test image), uidmap
# (newuidmap/newgidmap for rootless containers), util-linux (runuser,
# script), fuse3; the unprivileged user the rootless tests run as, with
# subordinate id ranges; and /dev/fuse usable by that user.
# Idempotent and quiet when everything is there.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "run-test-setup: needs root" >&2
  exit 1
fi
need=()
[ -x /bin/busybox ] || need+=(busybox-static)
command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  echo "run-test-setup: apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
user=cairn-test
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
# A 65536-id range past every range already given out.
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if ! grep -q "^$user:" "$f"; then
    start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f")
    echo "$user:$start:65536" >>"$f"
  fi
done
[ -e /dev/fuse ] && chmod 666 /dev/fuse
exit 0
