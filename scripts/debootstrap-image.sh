#!/usr/bin/env bash
# Builds the second, real test image of the container tests: a Debian
# minbase root filesystem made by debootstrap from the machine's own apt
# mirror, packed as a rootfs tarball that `cairn import` takes.
#
# The tarball is cached (default /var/tmp/cairn-debootstrap/minbase.tar);
# a second run only prints its path. Needs root. Prints the tarball path.
#
#   CAIRN_DEBOOTSTRAP_DIR=dir   where the cache lives
set -euo pipefail
dir=${CAIRN_DEBOOTSTRAP_DIR:-/var/tmp/cairn-debootstrap}
out=$dir/minbase.tar
if [ -s "$out" ]; then
  echo "$out"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "debootstrap-image: needs root" >&2
  exit 1
fi
if ! command -v debootstrap > /dev/null 2>&1; then
  echo "debootstrap-image: apt-get install debootstrap" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq > /dev/null
  apt-get install -y -qq debootstrap > /dev/null
fi

# The suite and mirror this machine's apt already uses (deb822 or one-line
# sources), so no host name is written down here.
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
mirror=$(
  {
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
  } | grep -v -- '-security' | grep -m1 '/debian/\?$' || true
)
[ -n "$mirror" ] || { echo "debootstrap-image: no Debian mirror in the apt sources" >&2; exit 1; }

mkdir -p "$dir"
root=$(mktemp -d "$dir/root.XXXXXX")
trap 'rm -rf "$root" "$out.tmp"' EXIT
echo "debootstrap-image: debootstrap --variant=minbase $suite (a minute or two)" >&2
# Twice at most: a mirror hiccup should not fail a whole test run.
for try in 1 2; do
  if timeout 900 debootstrap --variant=minbase "$suite" "$root" "$mirror" > "$dir/debootstrap.log" 2>&1; then
    break
  fi
  tail -20 "$dir/debootstrap.log" >&2
  if [ "$try" = 2 ]; then
    echo "debootstrap-image: debootstrap failed (log: $dir/debootstrap.log)" >&2
    exit 1
  fi
  echo "debootstrap-image: retrying" >&2
  rm -rf "$root" && mkdir "$root"
done
# No package caches or device nodes in the image: smaller, and the same
# tarball imports as a user.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*_* "$root"/dev/*
tar --numeric-owner --xattrs -C "$root" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
