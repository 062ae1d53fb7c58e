#!/usr/bin/env bash
# The main job on a built-in default: build cairnfs, make three small sample
# layers, mount them merged with cairnfs, and show lookups, a copy-up and a
# whiteout in action. Needs root (or a user namespace: see README).
set -euo pipefail
cd "$(dirname "$0")/.."
CAIRN_SKIP_PJDFSTEST=1 scripts/setup.sh
cargo build --release --quiet --bin cairnfs
cairnfs=$PWD/target/release/cairnfs

demo=$(mktemp -d /tmp/cairn-demo.XXXXXX)
mnt=$demo/merged
cleanup() { mountpoint -q "$mnt" && umount "$mnt"; rm -rf "$demo"; }
trap cleanup EXIT
mkdir -p "$demo"/{base,app,config,upper,work,merged}
# base: a tiny "OS"; app: adds a program and removes a base file;
# config: the topmost lower, overriding one file.
mkdir -p "$demo"/base/etc "$demo"/base/bin "$demo"/base/usr/share/doc
echo "debian-like 1.0" > "$demo"/base/etc/os-release
echo "motd from base" > "$demo"/base/etc/motd
echo "#!/bin/sh" > "$demo"/base/bin/tool
echo "old docs" > "$demo"/base/usr/share/doc/README
mkdir -p "$demo"/app/bin "$demo"/app/usr/share
echo "#!/bin/sh
echo hello from app" > "$demo"/app/bin/app
touch "$demo"/app/usr/share/.wh.doc           # OCI whiteout: hides /usr/share/doc
mkdir -p "$demo"/config/etc
echo "motd from config" > "$demo"/config/etc/motd

run() { echo "\$ $*"; "$@"; }
lowers=$demo/config:$demo/app:$demo/base
run "$cairnfs" -o "lowerdir=$lowers,upperdir=$demo/upper,workdir=$demo/work" "$mnt"
echo
echo "# Lookups resolve top-down: config's motd wins, base's os-release shows through"
run cat "$mnt/etc/motd" "$mnt/etc/os-release"
echo "# app's .wh.doc hides base's /usr/share/doc"
run ls -A "$mnt/usr/share"
echo
echo "# Copy-up: the first write copies the lower file into the upper dir"
run sh -c "echo 'edited in the container' >> '$mnt/etc/os-release'"
run cat "$mnt/etc/os-release"
run cat "$demo/base/etc/os-release"
run ls -l "$demo/upper/etc"
echo
echo "# Whiteout: deleting a lower file writes a 0:0 device into the upper dir"
run rm "$mnt/bin/tool"
run ls -l "$demo/upper/bin"
run ls "$mnt/bin"
echo
run umount "$mnt"
echo "# The lower dirs are unchanged; the upper dir holds every change:"
run find "$demo/upper" -mindepth 1
