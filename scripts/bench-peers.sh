#!/usr/bin/env bash
# bench-peers.sh: the same workloads, on the same lower layers, through each
# overlay implementation in turn (issue 3):
#   plain      a plain directory holding the merged tree (the limit)
#   kernel     kernel overlayfs (mount -t overlay)
#   fo1        fuse-overlayfs 1.x (Debian package)
#   fo2        fuse-overlayfs 2.0 (cargo install fuse-overlayfs; cached)
#   cairnfs    target/release/cairnfs (built if missing)
# Each workload runs on a fresh mount with a fresh upper dir (the backing
# filesystem's page cache warm, the overlay's caches cold), BENCH_REPS times;
# the table shows medians in seconds and the ratios cairnfs/kernel and
# cairnfs/best fuse-overlayfs. Results: target/bench/peers-STAMP.{txt,csv,json}
# (and peers-latest.*).
#
# Needs root (kernel overlayfs, FUSE). Runs in a private mount namespace,
# so nothing it mounts is seen outside or outlives it.
#
# Environment:
#   BENCH_DIR=/var/tmp/cairn-bench  where the layers are built (reused)
#   BENCH_REPS=3                    repetitions per workload
#   BENCH_QUICK=1                   small trees, 64 MiB big file, 1 rep
#   BENCH_IMPLS="plain kernel fo1 fo2 cairnfs"   which to run
#   BENCH_ONLY="walk read ..."      run only these workloads (ids below)
#   BENCH_TIMEOUT=300               seconds per workload run (watchdog)
#   CAIRNFS=path                    cairnfs binary to test
#   FUSE_OVERLAYFS2=path            fuse-overlayfs 2.0 binary to use
#   BENCH_OUT=dir                   results dir (default target/bench)
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "$0")/.." && pwd)
self=$root/scripts/bench-peers.sh

QUICK=${BENCH_QUICK:-0}
[ "$QUICK" = 0 ] && QUICK=
BENCH_DIR=${BENCH_DIR:-/var/tmp/cairn-bench}
if [ -n "$QUICK" ]; then
  REPS=${BENCH_REPS:-1}
  DATA=$BENCH_DIR/quick
  TREE_FILES=3000     # files copied from /usr/share into the bottom lower
  MID_FILES=800       # files of /usr/share/doc in the middle lower
  BIG_MB=64
  SMALL_N=200
  TAR_N=300
  CREATE_N=2000
  WRITE_MB=64
  FIO_MB=32           # random-read file size (and random-write file)
  FIO_IO_MB=8         # bytes moved per fio run
  SRC_FILES=500       # files of /usr/include in the extract tarball
  STACK_PATHS=300
  LIMIT=${BENCH_TIMEOUT:-60}
else
  REPS=${BENCH_REPS:-3}
  DATA=$BENCH_DIR/full
  TREE_FILES=0        # 0: all of it
  MID_FILES=0
  BIG_MB=1024
  SMALL_N=2000
  TAR_N=3000
  CREATE_N=20000
  WRITE_MB=1024
  FIO_MB=256
  FIO_IO_MB=64
  SRC_FILES=0
  STACK_PATHS=2000
  LIMIT=${BENCH_TIMEOUT:-300}
fi
STACK_DEPTH=100
SMALL_SIZE=100
LAYOUT=v1-$TREE_FILES-$MID_FILES-$BIG_MB-$SMALL_N-$TAR_N-$FIO_MB-$SRC_FILES-$STACK_PATHS
RUN=$BENCH_DIR/run
MNT=$RUN/mnt
UPPER=$RUN/upper
WORK=$RUN/work
LOWERS=$DATA/top:$DATA/middle:$DATA/bottom

# ---------------------------------------------------------------- workloads
# Each wl_ID takes the root of the tree under test; it runs in a child
# process (under the watchdog) that times itself.
wl_walk() { find "$1" -printf '%i %s %m\n' > /dev/null; }
wl_read() { dd if="$1/bulk/big.bin" of=/dev/null bs=1M status=none; }
wl_tar() { tar -C "$1" -cf - tree3k | wc -c > /dev/null; }
wl_create() {
  mkdir "$1/new"
  local i
  for ((i = 0; i < CREATE_N; i++)); do : > "$1/new/f$i" || return 1; done
}
wl_append_small() {
  local f
  for f in "$1"/bulk/small/*; do printf x >> "$f" || return 1; done
}
wl_rm_tree() { rm -rf "$1/doc"; }
wl_write() { dd if=/dev/zero of="$1/new.bin" bs=1M count="$WRITE_MB" status=none; }
wl_append_big() { printf x >> "$1/bulk/big.bin"; }
fio_common() {
  fio --name="$1" --filename="$2" --rw="$1" --bs=4k --size="${FIO_MB}M" \
    --io_size="${FIO_IO_MB}M" --ioengine=psync --invalidate=0 --randrepeat=1 \
    --norandommap --end_fsync=0 --fallocate=none --output=/dev/null
}
wl_fio_randread() { fio_common randread "$1/fio/rand.dat"; }
wl_fio_randwrite() { fio_common randwrite "$1/fio/w.dat"; }
wl_extract() { mkdir "$1/extract" && tar -C "$1/extract" -xf "$DATA/src.tar"; }
wl_chown() { chown -R 4321:4321 "$1/bulk"; }
wl_stack1() { cd "$1/d" && xargs -a "$DATA/stack-names" stat -c %i > /dev/null; }
wl_stack100() { wl_stack1 "$@"; }

# id|label (walk_cold/walk_warm come from one mount of `walk`).
WORKLOADS="walk_cold|walk + stat all (cold)
walk_warm|walk + stat all (warm)
read|read big file (seq)
tar|tar a small-file subtree to a pipe
create|create empty files
append_small|append 1 byte to small lower files
rm_tree|rm -rf a lower subtree
write|write big new file (seq)
append_big|append 1 byte to the big lower file
fio_randread|fio 4k random read (lower file)
fio_randwrite|fio 4k random write (upper file)
extract|extract a source tarball
chown|chown -R lower tree with big file
stack1|stat N paths, 1-layer stack
stack100|stat N paths, 100-layer stack"

# ------------------------------------------------------ child: one timed run
if [ "${1:-}" = __wl ]; then
  # __wl ID DIR TIMEFILE
  id=$2 dir=$3 tf=$4
  t0=$EPOCHREALTIME
  rc=0
  "wl_$id" "$dir" || rc=$?
  t1=$EPOCHREALTIME
  echo "$rc $t0 $t1" > "$tf"
  exit "$rc"
fi

log() { printf '%s\n' "$*" >&2; }
die() { log "bench-peers: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (kernel overlayfs, FUSE mounts)"

# ---------------------------------------- a private mount namespace for all
if [ -z "${CAIRN_BENCH_NS:-}" ]; then
  export CAIRN_BENCH_NS=1
  exec unshare -m --propagation private "$self" "$@"
fi

# ------------------------------------------------------------- requirements
need_apt=()
command -v fio > /dev/null || need_apt+=(fio)
command -v fuse-overlayfs > /dev/null || need_apt+=(fuse-overlayfs)
command -v fusermount3 > /dev/null || need_apt+=(fuse3)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]} (apt-get)"
  { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      timeout 600 apt-get install -y -qq "${need_apt[@]}"; } > /dev/null 2>&1 ||
    log "NOTICE: apt-get install ${need_apt[*]} failed; those parts are skipped"
fi
HAVE_FIO=; command -v fio > /dev/null && HAVE_FIO=1
FO1=$(command -v fuse-overlayfs || true)

FO2=${FUSE_OVERLAYFS2:-$BENCH_DIR/peer-fuse-overlayfs-2/bin/fuse-overlayfs}
if [ ! -x "$FO2" ]; then
  log "installing fuse-overlayfs 2.0 (cargo install, cached in $BENCH_DIR/peer-fuse-overlayfs-2)"
  mkdir -p "$BENCH_DIR"
  if ! timeout 1800 cargo install --locked --quiet --root "$BENCH_DIR/peer-fuse-overlayfs-2" \
      --version '^2' fuse-overlayfs > "$BENCH_DIR/fo2-install.log" 2>&1; then
    log "NOTICE: cargo install fuse-overlayfs failed (see $BENCH_DIR/fo2-install.log); fo2 skipped"
    FO2=
  fi
fi

CAIRNFS=${CAIRNFS:-$root/target/release/cairnfs}
if [ ! -x "$CAIRNFS" ]; then
  log "building cairnfs (cargo build --release --bin cairnfs)"
  (cd "$root" && env -u CARGO_TARGET_DIR cargo build --release --quiet --bin cairnfs) ||
    die "cargo build failed"
  CAIRNFS=$root/target/release/cairnfs
fi

IMPLS=${BENCH_IMPLS:-plain kernel fo1 fo2 cairnfs}
active=()
for impl in $IMPLS; do
  case $impl in
    fo1) [ -n "$FO1" ] || { log "NOTICE: fuse-overlayfs 1.x missing; fo1 skipped"; continue; } ;;
    fo2) [ -n "$FO2" ] || continue ;;
    kernel) grep -qw overlay /proc/filesystems || modprobe overlay 2> /dev/null ||
      { log "NOTICE: no kernel overlayfs; kernel skipped"; continue; } ;;
    plain | cairnfs) ;;
    *) die "unknown implementation $impl" ;;
  esac
  active+=("$impl")
done

# ------------------------------------------------------------------ cleanup
SERVER_PID=
cleanup() {
  set +e
  if mountpoint -q "$MNT"; then
    umount "$MNT" 2> /dev/null || { abort_fuse "$MNT"; umount -l "$MNT"; }
  fi
  mountpoint -q "$RUN/prep" && umount -l "$RUN/prep"
  [ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2> /dev/null
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

abort_fuse() {
  mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2> /dev/null
  local dev
  dev=$(awk -v m="$1" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | tail -1)
  [ -n "$dev" ] && [ -e "/sys/fs/fuse/connections/$dev/abort" ] &&
    echo 1 > "/sys/fs/fuse/connections/$dev/abort"
  return 0
}

# ------------------------------------------------------------- the layers
copy_files() { # SRC DST N: copy the first N regular files of SRC (0: all)
  mkdir -p "$2"
  if [ "$3" = 0 ]; then
    cp -a "$1/." "$2/"
  else
    (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | sed -z -n "1,$3p" |
      tar --null -cf - -T - 2> /dev/null) | tar -C "$2" -xf -
  fi
}

prepare() {
  if [ -f "$DATA/.ready" ] && [ "$(cat "$DATA/.ready")" = "$LAYOUT" ]; then
    log "layers: reusing $DATA"
    return
  fi
  log "layers: building $DATA (once; reused by later runs)"
  rm -rf "$DATA"
  mkdir -p "$DATA"/{bottom,middle,top}
  local b=$DATA/bottom m=$DATA/middle t=$DATA/top i
  # bottom: a real tree, a big file, many small files, a small-file subtree
  copy_files /usr/share "$b/usr-share" "$TREE_FILES"
  mkdir -p "$b/bulk/small" "$b/fio"
  dd if=/dev/urandom of="$b/bulk/big.bin" bs=1M count="$BIG_MB" status=none
  head -c "$SMALL_SIZE" /dev/zero | tr '\0' s > "$DATA/small.tmpl"
  for ((i = 0; i < SMALL_N; i++)); do cp "$DATA/small.tmpl" "$b/bulk/small/s$i"; done
  copy_files /usr/share/doc "$b/tree3k" "$TAR_N"
  dd if=/dev/urandom of="$b/fio/rand.dat" bs=1M count="$FIO_MB" status=none
  # middle: its own subtree (the rm -rf target), and some files in the
  # bottom's dirs, so those are merged directories
  copy_files /usr/share/doc "$m/doc" "$MID_FILES"
  mkdir -p "$m/usr-share/middle-extra" "$m/bulk"
  for ((i = 0; i < 100; i++)); do echo "middle $i" > "$m/usr-share/middle-extra/m$i"; done
  echo middle > "$m/bulk/README.middle"
  # top: a few files, an overriding file, a whiteout
  mkdir -p "$t/etc" "$t/usr-share" "$t/bulk/small"
  for ((i = 0; i < 50; i++)); do echo "top $i" > "$t/etc/conf$i"; done
  echo "top override" > "$t/bulk/small/s1"
  mknod "$t/bulk/small/s0" c 0 0 # hides the bottom's s0
  # the source tarball to extract, and the random-write file template
  (cd /usr/include && find . -type f -print0 | LC_ALL=C sort -z |
    { if [ "$SRC_FILES" = 0 ]; then cat; else sed -z -n "1,${SRC_FILES}p"; fi; } |
    tar --null -cf "$DATA/src.tar" -T -)
  dd if=/dev/urandom of="$DATA/fio-w.tmpl" bs=1M count="$FIO_MB" status=none
  # a 100-layer stack: every layer has d/ (a dir merged across all of them)
  # with one file of its own; the bottom also holds the STACK_PATHS names
  for ((i = 0; i < STACK_DEPTH; i++)); do
    mkdir -p "$DATA/s/$i/d"
    echo "$i" > "$DATA/s/$i/d/own$i"
  done
  local sb=$DATA/s/$((STACK_DEPTH - 1))/d
  for ((i = 0; i < STACK_PATHS; i++)); do : > "$sb/f$i"; echo "f$i"; done > "$DATA/stack-names"
  # plain: the merged tree as one directory (through kernel overlayfs, so
  # whiteouts apply), plus the random-write file
  mkdir -p "$RUN/prep"
  if mount -t overlay overlay -o "lowerdir=$LOWERS" "$RUN/prep" 2> /dev/null; then
    cp -a "$RUN/prep/." "$DATA/plain/"
    umount "$RUN/prep"
  else
    mkdir -p "$DATA/plain"
    for l in bottom middle top; do cp -a "$DATA/$l/." "$DATA/plain/"; done
    rm -f "$DATA/plain/bulk/small/s0"
  fi
  cp -a "$DATA/fio-w.tmpl" "$DATA/plain/fio/w.dat"
  echo "$LAYOUT" > "$DATA/.ready"
}

warm_backing() { # page-cache the layers' metadata and the files read
  find "$DATA/bottom" "$DATA/middle" "$DATA/top" "$DATA/s" "$DATA/plain" > /dev/null
  cat "$DATA/bottom/bulk/big.bin" "$DATA/bottom/fio/rand.dat" "$DATA/src.tar" \
    "$DATA/plain/bulk/big.bin" "$DATA/plain/fio/rand.dat" > /dev/null
  tar -C "$DATA/bottom" -cf - tree3k | wc -c > /dev/null
}

# ------------------------------------------------------------- mounting
# mount_impl IMPL LOWERS ID: a fresh upper/work and a fresh mount at $MNT
# (plain: nothing to mount; its tree is $DATA/plain). Sets SERVER_PID for
# FUSE servers.
fresh_upper() { # ID: the random-write file exists in the upper dir for fio
  rm -rf "$UPPER" "$WORK"
  mkdir -p "$UPPER" "$WORK" "$MNT"
  if [ "$1" = fio_randwrite ]; then
    mkdir "$UPPER/fio"
    cp "$DATA/fio-w.tmpl" "$UPPER/fio/w.dat"
  fi
}

find_server() { # the process serving $MNT: holds /dev/fuse, names $MNT
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/exe" 2> /dev/null)" = "$1" ] || continue
    tr '\0' ' ' < "$p/cmdline" 2> /dev/null | grep -qF " $MNT" || continue
    ls -l "$p/fd" 2> /dev/null | grep -q /dev/fuse || continue
    echo "${p#/proc/}"
    return 0
  done
  return 0
}

mount_impl() {
  local impl=$1 lowers=$2 id=$3 opts bin=
  SERVER_PID=
  fresh_upper "$id"
  opts="lowerdir=$lowers,upperdir=$UPPER,workdir=$WORK"
  case $impl in
    plain) return 0 ;;
    kernel) mount -t overlay overlay -o "$opts" "$MNT" ;;
    fo1) bin=$FO1 ;;
    fo2) bin=$FO2 ;;
    cairnfs) bin=$CAIRNFS ;;
  esac
  if [ -n "$bin" ]; then
    timeout 60 "$bin" -o "$opts" "$MNT" > "$RUN/server.log" 2>&1 ||
      { log "  $impl: mount failed: $(tail -3 "$RUN/server.log")"; return 1; }
    local i
    for ((i = 0; i < 100; i++)); do mountpoint -q "$MNT" && break; sleep 0.05; done
    SERVER_PID=$(find_server "$(readlink -f "$bin")")
  fi
  mountpoint -q "$MNT" || { log "  $impl: not mounted"; return 1; }
}

unmount_impl() {
  local impl=$1 i
  [ "$impl" = plain ] && return 0
  if mountpoint -q "$MNT"; then
    timeout 60 umount "$MNT" 2> /dev/null || { abort_fuse "$MNT"; umount -l "$MNT"; }
  fi
  if [ -n "$SERVER_PID" ]; then
    for ((i = 0; i < 200; i++)); do kill -0 "$SERVER_PID" 2> /dev/null || break; sleep 0.05; done
    kill -0 "$SERVER_PID" 2> /dev/null && { log "  $impl: server still alive after umount; killing"; kill -KILL "$SERVER_PID"; }
    SERVER_PID=
  fi
  return 0
}

# plain has no fresh mount: undo what a workload changed.
reset_plain() {
  local p=$DATA/plain
  case $1 in
    create) rm -rf "$p/new" ;;
    append_small) find "$p/bulk/small" -type f -exec truncate -s "$SMALL_SIZE" {} + &&
      truncate -s 13 "$p/bulk/small/s1" ;;
    rm_tree) rm -rf "$p/doc" && cp -a "$DATA/middle/doc" "$p/doc" ;;
    write) rm -f "$p/new.bin" ;;
    append_big) truncate -s "$((BIG_MB << 20))" "$p/bulk/big.bin" ;;
    extract) rm -rf "$p/extract" ;;
    chown) chown -R 0:0 "$p/bulk" ;;
  esac
}

# ------------------------------------------------------------- measuring
mkdir -p "$RUN"
OUT=${BENCH_OUT:-$root/target/bench}
mkdir -p "$OUT"
stamp=$(date +%Y%m%d-%H%M%S)${QUICK:+-quick}
RAW=$OUT/peers-$stamp.raw.csv
EXTRA=$OUT/peers-$stamp.extra.csv
echo "impl,workload,rep,seconds,status" > "$RAW"
echo "impl,rep,metric,value" > "$EXTRA"

# timed IMPL ID DIR REP: one timed run under the watchdog; records it.
timed() {
  local impl=$1 id=$2 dir=$3 rep=$4 rc=0 tf=$RUN/time status secs=
  rm -f "$tf"
  local fn=${id%_cold}
  fn=${fn%_warm}
  "$root/scripts/with-watchdog.sh" "$LIMIT" "$self" __wl "$fn" "$dir" "$tf" \
    > "$RUN/wl.log" 2>&1 < /dev/null || rc=$?
  if [ "$rc" = 124 ]; then
    status=timeout
  elif [ "$rc" != 0 ] || [ ! -s "$tf" ]; then
    status=fail
    log "  $impl $id: exit $rc: $(tail -2 "$RUN/wl.log" | tr '\n' ' ')"
  else
    status=ok
  fi
  if [ -s "$tf" ]; then
    secs=$(awk '{ printf "%.4f", $3 - $2 }' "$tf")
  fi
  echo "$impl,$id,$rep,$secs,$status" >> "$RAW"
  printf '  %-8s %-14s rep %d: %s s %s\n' "$impl" "$id" "$rep" "${secs:-?}" \
    "$([ "$status" = ok ] || echo "($status)")" >&2
}

extra() { echo "$1,$2,$3,$4" >> "$EXTRA"; }

server_stats() { # IMPL REP WHEN
  [ -n "$SERVER_PID" ] && [ -r "/proc/$SERVER_PID/status" ] || return 0
  local hwm rss fds thr
  hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status")
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status")
  thr=$(awk '/^Threads:/ { print $2 }' "/proc/$SERVER_PID/status")
  fds=$(ls "/proc/$SERVER_PID/fd" | wc -l)
  extra "$1" "$2" "peak_rss_kib_$3" "$hwm"
  extra "$1" "$2" "rss_kib_$3" "$rss"
  extra "$1" "$2" "open_fds_$3" "$fds"
  extra "$1" "$2" "threads_$3" "$thr"
}

selected() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }

run_impl() {
  local impl=$1 rep id dir
  for ((rep = 1; rep <= REPS; rep++)); do
    for id in walk read tar create append_small rm_tree write append_big \
      fio_randread fio_randwrite extract chown stack1 stack100; do
      selected "$id" || { [ "$id" = walk ] && selected walk_cold; } || continue
      case $id in fio_*) [ -n "$HAVE_FIO" ] || continue ;; esac
      [ "$impl" = plain ] && [ "$id" = stack100 ] && continue
      local lowers=$LOWERS
      case $id in
        stack1) lowers=$DATA/s/$((STACK_DEPTH - 1)) ;;
        stack100) lowers=$(seq -s: -f "$DATA/s/%g" 0 $((STACK_DEPTH - 1))) ;;
      esac
      dir=$MNT
      if [ "$impl" = plain ]; then
        dir=$DATA/plain
        [ "$id" = stack1 ] && dir=$DATA/s/$((STACK_DEPTH - 1))
      fi
      mount_impl "$impl" "$lowers" "$id" || {
        echo "$impl,$id,$rep,,fail" >> "$RAW"
        unmount_impl "$impl"
        continue
      }
      if [ "$id" = walk ]; then
        timed "$impl" walk_cold "$dir" "$rep"
        server_stats "$impl" "$rep" after_cold_walk
        timed "$impl" walk_warm "$dir" "$rep"
        server_stats "$impl" "$rep" after_warm_walk
      else
        timed "$impl" "$id" "$dir" "$rep"
      fi
      if [ "$id" = chown ] && [ "$impl" != plain ]; then
        extra "$impl" "$rep" upper_kib_after_chown "$(du -sk "$UPPER" | cut -f1)"
      fi
      if [ "$id" = append_big ] && [ "$impl" != plain ]; then
        extra "$impl" "$rep" upper_kib_after_append_big "$(du -sk "$UPPER" | cut -f1)"
      fi
      unmount_impl "$impl"
      if [ "$impl" = plain ]; then reset_plain "$id"; fi
    done
  done
}

prepare
log "implementations: ${active[*]}; reps: $REPS; data: $DATA"
t_start=$EPOCHREALTIME
for impl in "${active[@]}"; do
  log "== $impl"
  warm_backing
  run_impl "$impl"
done
rm -rf "$UPPER" "$WORK"
t_total=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')

# ------------------------------------------------------------- the report
versions() {
  echo "kernel=$(uname -r)"
  [ -n "$FO1" ] && echo "fo1=$("$FO1" --version 2>&1 | awk '/fuse-overlayfs: version/ { print $3 }')"
  [ -n "$FO2" ] && echo "fo2=$("$FO2" --version 2>&1 | awk '/version/ { print $NF; exit }')"
  echo "cairnfs=$("$CAIRNFS" --version 2>&1 | awk '{ print $NF; exit }') ($CAIRNFS, built $(date -r "$CAIRNFS" '+%F %T'))"
  echo "repo=$(git -C "$root" rev-parse --short HEAD 2> /dev/null || echo '?')"
  echo "cpus=$(nproc)"
  echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
}
versions > "$RUN/versions"
python3 - "$RAW" "$EXTRA" "$OUT/peers-$stamp" "$RUN/versions" "$REPS" "${QUICK:-0}" "$t_total" "$WORKLOADS" <<'PY'
import csv, json, statistics, sys
raw, extra, base, vers, reps, quick, total, wls = sys.argv[1:]
labels = dict(l.split("|", 1) for l in wls.splitlines())
order = list(labels)
impls = ["plain", "kernel", "fo1", "fo2", "cairnfs"]
names = {"plain": "plain dir", "kernel": "kernel ovl", "fo1": "fuse-ovl 1", "fo2": "fuse-ovl 2", "cairnfs": "cairnfs"}
runs = list(csv.DictReader(open(raw)))
seen = [i for i in impls if any(r["impl"] == i for r in runs)]
med, status = {}, {}
for i in seen:
    for w in order:
        rs = [r for r in runs if r["impl"] == i and r["workload"] == w]
        if not rs:
            continue
        ok = [float(r["seconds"]) for r in rs if r["status"] == "ok" and r["seconds"]]
        bad = [r["status"] for r in rs if r["status"] != "ok"]
        med[i, w] = statistics.median(ok) if ok and not bad else None
        status[i, w] = bad[0] if bad else "ok"
def ratio(a, b):
    return a / b if a is not None and b else None
rows = []
for w in order:
    if not any((i, w) in status for i in seen):
        continue
    c = med.get(("cairnfs", w))
    k = med.get(("kernel", w))
    peers = [med.get((p, w)) for p in ("fo1", "fo2") if med.get((p, w)) is not None]
    best = min(peers) if peers else None
    rows.append({"workload": w, "label": labels[w],
                 **{i: med.get((i, w)) for i in seen},
                 **{i + "_status": status.get((i, w), "n/a") for i in seen},
                 "cairnfs_over_kernel": ratio(c, k),
                 "cairnfs_over_best_fuse": ratio(c, best)})
ex = list(csv.DictReader(open(extra)))
extras = {}
for e in ex:
    extras.setdefault(e["impl"], {}).setdefault(e["metric"], []).append(int(e["value"]))
extras = {i: {m: (max(v) if m.startswith(("peak", "open_fds")) else statistics.median(v))
              for m, v in ms.items()} for i, ms in extras.items()}
versions = dict(l.split("=", 1) for l in open(vers).read().splitlines())
def cell(r, i):
    v = r.get(i)
    if v is None:
        st = r.get(i + "_status", "n/a")
        return st if st != "ok" else "n/a"
    return f"{v:.3f}"
def size(kib):
    if kib is None:
        return "?"
    return f"{kib / 1024:.1f} MiB" if kib >= 1024 else f"{kib:.0f} KiB"
def rcell(v):
    return "-" if v is None else f"{v:.2f}x"
hdr = ["workload"] + [names[i] for i in seen] + ["cairn/kernel", "cairn/best-fuse"]
tab = [hdr] + [[r["label"]] + [cell(r, i) for i in seen] +
               [rcell(r["cairnfs_over_kernel"]), rcell(r["cairnfs_over_best_fuse"])] for r in rows]
wid = [max(len(t[c]) for t in tab) for c in range(len(hdr))]
out = []
mode = "QUICK (scaled down)" if quick != "0" else "full"
out.append(f"bench-peers: {mode}, medians of {reps} rep(s), seconds; {total} s total")
out.append("; ".join(f"{k} {v}" for k, v in versions.items()))
out.append("")
out.append("| " + " | ".join(h.ljust(w) for h, w in zip(hdr, wid)) + " |")
out.append("|" + "|".join("-" * (w + 2) for w in wid) + "|")
for t in tab[1:]:
    out.append("| " + " | ".join([t[0].ljust(wid[0])] + [x.rjust(w) for x, w in zip(t[1:], wid[1:])]) + " |")
out.append("")
out.append("FUSE servers (max over reps):")
for i in seen:
    e = extras.get(i, {})
    if "peak_rss_kib_after_cold_walk" in e:
        out.append(f"  {names[i]:<11} peak RSS after cold walk {e['peak_rss_kib_after_cold_walk']/1024:.1f} MiB, "
                   f"after warm walk {e.get('peak_rss_kib_after_warm_walk', 0)/1024:.1f} MiB; "
                   f"open fds after cold walk {e['open_fds_after_cold_walk']}, "
                   f"after warm walk {e.get('open_fds_after_warm_walk', '?')}; threads {e.get('threads_after_cold_walk', '?')}")
out.append("Upper dir after chown -R of the big-file tree (metacopy check) / after the 1-byte append to the big file:")
for i in seen:
    e = extras.get(i, {})
    if "upper_kib_after_chown" in e:
        out.append(f"  {names[i]:<11} {size(e['upper_kib_after_chown'])} / {size(e.get('upper_kib_after_append_big'))}")
text = "\n".join(out) + "\n"
open(base + ".txt", "w").write(text)
with open(base + ".csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["workload", "label"] + seen + ["cairnfs_over_kernel", "cairnfs_over_best_fuse"])
    for r in rows:
        w.writerow([r["workload"], r["label"]] + [("" if r[i] is None else f"{r[i]:.4f}") for i in seen]
                   + [("" if r[k] is None else f"{r[k]:.3f}") for k in ("cairnfs_over_kernel", "cairnfs_over_best_fuse")])
json.dump({"mode": mode, "reps": int(reps), "total_seconds": int(total), "versions": versions,
           "medians": rows, "servers": extras, "runs": runs}, open(base + ".json", "w"), indent=1)
print(text, end="")
PY
for ext in txt csv json raw.csv extra.csv; do cp "$OUT/peers-$stamp.$ext" "$OUT/peers-latest.$ext"; done
log "results: $OUT/peers-$stamp.{txt,csv,json}"
