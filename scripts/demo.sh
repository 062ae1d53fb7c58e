#!/usr/bin/env bash
# The main job on a built-in default, no registry and no network:
#  1. build a small image from Debian's busybox-static, load it into a cairn
#     store, run commands in containers over cairnfs, commit one, `cairn df`;
#  2. mount three small sample layers merged with cairnfs and show lookups,
#     a copy-up and a whiteout in action.
# Needs root (as a user: see docs/run.md and the README).
set -euo pipefail
cd "$(dirname "$0")/.."
CAIRN_SKIP_PJDFSTEST=1 scripts/setup.sh
cargo build --release --quiet --bins
export PATH=$PWD/target/release:$PATH
cairnfs=$PWD/target/release/cairnfs
# Echo a command (quoted as a shell would need it), then run it.
run() {
  printf '$'
  local a
  for a; do
    if [[ $a =~ ^[][A-Za-z0-9_./:=,+@%-]+$ ]]; then printf ' %s' "$a"; else printf " '%s'" "${a//\'/\'\\\'\'}"; fi
  done
  echo
  "$@"
}

# ------------------------------------------------ 1. an image and containers
box=$(mktemp -d /tmp/cairn-demo-image.XXXXXX)
export CAIRN_ROOT=$box/store
cleanup_box() { cairn rm -f demo > /dev/null 2>&1 || true; rm -rf "$box"; }
trap cleanup_box EXIT
mkdir -p "$box"/rootfs/{bin,etc,root,tmp}
chmod 1777 "$box"/rootfs/tmp
cp /bin/busybox "$box"/rootfs/bin/
for a in $("$box"/rootfs/bin/busybox --list); do
  [ "$a" = busybox ] || ln -s busybox "$box/rootfs/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$box"/rootfs/etc/passwd
echo 'root:x:0:' > "$box"/rootfs/etc/group
tar -C "$box"/rootfs -cf "$box"/busybox.tar .
echo "# A one-layer image from a busybox rootfs, stored by content (CAIRN_ROOT=$CAIRN_ROOT)"
run cairn import "$box"/busybox.tar busybox:demo
run cairn images
echo
echo "# A container: the image's layers merged by cairnfs, its own namespaces"
run cairn run --rm --hostname demo busybox:demo sh -c \
  'echo "hello from $(hostname), pid $$"; tr "\0" " " < /proc/1/cmdline; echo'
echo
echo "# Writes go to the container's own upper layer; the image never changes"
run cairn run --name demo busybox:demo sh -c 'echo changed > /etc/motd; rm /bin/vi'
run cairn diff demo
run cairn commit demo busybox:motd
run cairn run --rm busybox:motd cat /etc/motd
run cairn run --rm busybox:demo sh -c 'ls /etc/motd /bin/vi 2>&1; true'
run cairn rm demo
echo
echo "# Both images share the busybox layer on disk"
run cairn df
cleanup_box
trap - EXIT
echo

# ------------------------------------------------ 2. cairnfs over sample layers
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

lowers=$demo/config:$demo/app:$demo/base
run "$cairnfs" -o "lowerdir=$lowers,upperdir=$demo/upper,workdir=$demo/work" "$mnt"
echo
echo "# Lookups resolve top-down: config's motd wins, base's os-release shows through"
run cat "$mnt/etc/motd" "$mnt/etc/os-release"
echo "# app's .wh.doc hides base's /usr/share/doc"
run ls -A "$mnt/usr/share"
echo
echo "# Copy-up: the first write copies the lower file into the upper dir"
run sh -c "echo edited in the container >> $mnt/etc/os-release"
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
