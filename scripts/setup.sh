#!/usr/bin/env bash
# Installs what cairn's build and tests need on a fresh Debian machine.
# Idempotent and quiet when everything is there.
set -euo pipefail
need_apt=()
for pair in fusermount3:fuse3 fuse-overlayfs:fuse-overlayfs setfattr:attr setfacl:acl unshare:util-linux \
            busybox:busybox-static; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ "${CAIRN_SKIP_PJDFSTEST:-0}" != 1 ] && ! command -v pjdfstest >/dev/null 2>&1 \
   && [ ! -x "$HOME/.cargo/bin/pjdfstest" ]; then
  echo "setup: cargo install pjdfstest (about 2 minutes)" >&2
  cargo install pjdfstest --locked --quiet
fi
# A user the rootless tests run as.
id cairn-test >/dev/null 2>&1 || useradd -m -s /bin/bash cairn-test
# The second unprivileged user of pjdfstest's ownership tests (with nobody).
id pjdtest >/dev/null 2>&1 || useradd -M -U -s /usr/sbin/nologin pjdtest
# Let that user open /dev/fuse inside a user namespace.
[ -e /dev/fuse ] && chmod 666 /dev/fuse
exit 0
