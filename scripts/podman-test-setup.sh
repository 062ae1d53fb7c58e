#!/usr/bin/env bash
# Installs what the podman tests (fuse-tests/podman.rs) and
# scripts/podman-compare.sh need: podman with runc (crun refuses the cgroup
# layout of these machines), newuidmap/newgidmap, a static busybox for the
# test image, subordinate id ranges for the rootless user cairn-test, and a
# /dev/fuse that user can open. Idempotent; quiet when everything is there.
# Needs root.
set -euo pipefail
user=${CAIRN_TEST_USER:-cairn-test}
need_apt=()
for pair in podman:podman runc:runc newuidmap:uidmap busybox:busybox-static \
            fusermount3:fuse3 fuse-overlayfs:fuse-overlayfs; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# busybox must be the static one: it is copied alone into the image.
if command -v busybox >/dev/null 2>&1 && ldd "$(command -v busybox)" >/dev/null 2>&1; then
  need_apt+=(busybox-static)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "podman-test-setup: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The rootless test user (scripts/setup.sh makes it too).
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
# Subordinate ids: 65536 of them for the user's user namespace. Keep any
# range already there; pick a start past every range in use otherwise.
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if ! grep -q "^$user:" "$f"; then
    start=$(awk -F: 'BEGIN { m = 100000 } { e = $2 + $3; if (e > m) m = e } END { print m }' "$f")
    echo "$user:$start:65536" >> "$f"
  fi
done
# Let the user open /dev/fuse (rootless mounts through fuse-overlayfs/cairnfs).
[ -e /dev/fuse ] && chmod 666 /dev/fuse
exit 0
