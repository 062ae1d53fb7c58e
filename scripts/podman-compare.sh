#!/usr/bin/env bash
# podman-compare.sh: the same podman runs with each overlay mount_program:
# cairnfs, fuse-overlayfs 1.10 (Debian) and fuse-overlayfs 2.0 (crates.io).
# Prints a table: for root and rootless (user cairn-test), whether
# `podman run --rm localhost/bb true` works and its median wall time over
# RUNS runs (after one warm-up), and whether a `--uidmap` run (root:
# 0:100000:65536, rootless: 0:1:2000) shows the image's owners.
#
# Root --uidmap fails with every program under podman 4.3 (containers/storage
# before "overlay: disable native idmap with mount-program"): it makes
# idmapped mounts of the lower layers (GRAPHROOT/overlay/ID/mapped/N, flag
# `idmapped` in mountinfo) AND passes uidmapping=/gidmapping= to the mount
# program, so lower-layer ids are shifted twice; with 0:100000:65536 they
# land outside the mapping and show as the overflow id, and runc (container
# root, host uid 100000) gets EACCES creating its mount targets
# (/etc/hostname, /etc/resolv.conf, /run/.containerenv ...). Small shifts
# (0:1:2000) run but show the image's root files as uid 1.
#
# Usage (as root): scripts/podman-compare.sh [RUNS]
# Env: CAIRNFS (default: release build in $CARGO_TARGET_DIR or target/),
#      FUSE_OVERLAYFS2 (default: ~/.cargo/bin/fuse-overlayfs or the copy
#      scripts/bench-peers.sh installs in /var/tmp/cairn-bench; installed
#      there with `cargo install fuse-overlayfs` if absent).
set -uo pipefail
runs=${1:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
user=cairn-test
[ "$(id -u)" = 0 ] || { echo "podman-compare: needs root" >&2; exit 1; }
bash "$here/scripts/podman-test-setup.sh"

cairnfs=${CAIRNFS:-${CARGO_TARGET_DIR:-$here/target}/release/cairnfs}
if [ ! -x "$cairnfs" ]; then
  (cd "$here" && cargo build --release --quiet --bin cairnfs) || exit 1
fi
fo2=${FUSE_OVERLAYFS2:-}
if [ -z "$fo2" ]; then
  for c in "$HOME/.cargo/bin/fuse-overlayfs" /var/tmp/cairn-bench/peer-fuse-overlayfs-2/bin/fuse-overlayfs; do
    [ -x "$c" ] && { fo2=$c; break; }
  done
fi
if [ -z "$fo2" ]; then
  # The same cache as scripts/bench-peers.sh.
  echo "podman-compare: cargo install fuse-overlayfs (2.x) into /var/tmp/cairn-bench/peer-fuse-overlayfs-2" >&2
  cargo install fuse-overlayfs --locked --quiet --version '^2' --root /var/tmp/cairn-bench/peer-fuse-overlayfs-2 >&2 || true
  fo2=/var/tmp/cairn-bench/peer-fuse-overlayfs-2/bin/fuse-overlayfs
fi

# Short paths: podman refuses a runroot longer than 50 characters.
work=$(mktemp -d /tmp/cpc.XXXX)
chmod 755 "$work"
cat > "$work/containers.conf" <<'EOF'
[containers]
netns = "host"
default_ulimits = ["nofile=1024:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
# The busybox image's rootfs (with a 1000:1000 home for the --uidmap check).
r=$work/rootfs
mkdir -p "$r"/{bin,etc,tmp,root,run,home/user}
cp "$(command -v busybox)" "$r/bin/busybox"
for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n' > "$r/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' > "$r/etc/group"
echo hi > "$r/home/user/file"
chmod 1777 "$r/tmp"
chown -R 0:0 "$r"; chown -R 1000:1000 "$r/home/user"
tar --numeric-owner -C "$r" -cf "$work/rootfs.tar" .
chmod 644 "$work/rootfs.tar"

cleanup_one() { # DIR
  local d=$1 pid m
  [ -f "$d/xdg/libpod/tmp/pause.pid" ] && kill -9 "$(cat "$d/xdg/libpod/tmp/pause.pid")" 2>/dev/null
  sleep 0.2
  awk -v b="$d" '$5 ~ "^"b { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null; done
  for pid in $(grep -lsa -- "$d" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    [ "$pid" != $$ ] && kill -9 "$pid" 2>/dev/null; done
}
trap 'for d in "$work"/*/; do cleanup_one "${d%/}"; done; rm -rf "$work"' EXIT

# pm DIR MODE PROG ARGS...: podman with a private store using PROG.
pm() {
  local d=$1 mode=$2 prog=$3; shift 3
  local env=(CONTAINERS_CONF="$work/containers.conf" CONTAINERS_STORAGE_CONF="$d/storage.conf"
             XDG_RUNTIME_DIR="$d/xdg" HOME="$d/home" XDG_CONFIG_HOME="$d/home/.config"
             XDG_DATA_HOME="$d/home/.local/share")
  local opts=(--root "$d/root" --runroot "$d/runroot" --storage-driver overlay
              --storage-opt "overlay.mount_program=$prog")
  if [ "$mode" = root ]; then
    env "${env[@]}" timeout -k 10 120 podman "${opts[@]}" --tmpdir "$d/tmp" "$@"
  else
    (cd "$d" && runuser -u "$user" -- env "${env[@]}" timeout -k 10 120 podman "${opts[@]}" "$@")
  fi
}

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else print int((a[NR/2] + a[NR/2+1]) / 2) }'; }

# measure NAME PROG MODE: prints one table row.
measure() {
  local name=$1 prog=$2 mode=$3 d times=() ok=pass t0 t1 i map idmap=fail err
  d=$(mktemp -d "$work/XXXX"); chmod 755 "$d"
  mkdir -p "$d"/{root,runroot,tmp,xdg,home}; chmod 700 "$d/xdg"
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n[storage.options.overlay]\nmount_program = "%s"\n' \
    "$d/root" "$d/runroot" "$prog" > "$d/storage.conf"
  [ "$mode" = rootless ] && chown -R "$user:" "$d"
  if [ ! -x "$prog" ]; then
    printf '%-20s %-9s %-5s %9s  %s\n' "$name" "$mode" "-" "-" "not installed: $prog"
    return
  fi
  err=$d/err
  if ! pm "$d" "$mode" "$prog" import -q "$work/rootfs.tar" localhost/bb >/dev/null 2>"$err" ||
     ! pm "$d" "$mode" "$prog" run --rm localhost/bb true >/dev/null 2>>"$err"; then
    ok=FAIL
  else
    for ((i = 0; i < runs; i++)); do
      t0=$(date +%s%N)
      pm "$d" "$mode" "$prog" run --rm localhost/bb true >/dev/null 2>>"$err" || ok=FAIL
      t1=$(date +%s%N)
      times+=($(( (t1 - t0) / 1000000 )))
    done
  fi
  if [ "$mode" = root ]; then map=0:100000:65536; else map=0:1:2000; fi
  if [ "$ok" = pass ] && out=$(pm "$d" "$mode" "$prog" run --rm --uidmap "$map" --gidmap "$map" localhost/bb \
       stat -c %u:%g / /etc/passwd /home/user/file 2>>"$err") ; then
    if [ "$(echo $out)" = "0:0 0:0 1000:1000" ]; then idmap=pass; else idmap="wrong owners: $(echo $out)"; fi
  else
    idmap="FAIL: $(grep -oE '(lstat|open) [^ ]*: permission denied' "$err" | tail -n 1 | sed 's|[^ ]*/merged|…/merged|')"
  fi
  pm "$d" "$mode" "$prog" rm -af -t 0 >/dev/null 2>&1
  cleanup_one "$d"
  [ "$ok" = pass ] || idmap="(true failed: $(grep -m1 'Error' "$err" | sed "s|$d|…|g" | cut -c1-90))"
  printf '%-20s %-9s %-5s %9s  %s\n' "$name" "$mode" "$ok" \
    "$(printf '%s\n' "${times[@]}" | grep . | median)" "$idmap"
}

ver() { "$1" --version 2>/dev/null | sed -n 's/^fuse-overlayfs: version //p' | head -n 1; }
echo "podman $(podman --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1 {print $3}'), $runs runs each"
printf '%-20s %-9s %-5s %9s  %s\n' program mode true "median ms" "--uidmap owners"
# cairnfs with allow_other added to its options (what fuse-overlayfs always
# does): shows what cairnfs gives once it mounts that way by itself.
printf '#!/bin/sh\nexec "%s" "$1" "$2,allow_other" "$3"\n' "$cairnfs" > "$work/cairnfs-allow-other"
chmod 755 "$work/cairnfs-allow-other"
for mode in root rootless; do
  measure cairnfs "$cairnfs" "$mode"
  measure cairnfs+allow_other "$work/cairnfs-allow-other" "$mode"
  measure "fuse-overlayfs-$(ver /usr/bin/fuse-overlayfs)" /usr/bin/fuse-overlayfs "$mode"
  measure "fuse-overlayfs-$(ver "$fo2")" "$fo2" "$mode"
done
