#!/usr/bin/env bash
# bench-memory.sh: does the cairnfs server's memory stay bounded and flat
# however much of a tree is walked? (issue 3: peak RSS under 100 MiB after
# walking a 200k-file lower tree, flat across repeated walks; under 1,000
# open fds at any point.)
#
# Builds a lower layer of FILES empty files (default 200,000, in 1,000
# directories; cached in $BENCH_DIR), mounts it with cairnfs over a fresh
# upper, walks the merged tree with `find -printf` WALKS times (default 5)
# and prints the server's RSS, peak RSS (VmHWM) and open fds after each
# walk, plus the most fds seen by a sampler polling every 50 ms. The same
# walks run on fuse-overlayfs 1.x when it is installed, for comparison.
#
# Needs root. Runs in a private mount namespace: nothing outlives it.
# Env: FILES, WALKS, BENCH_DIR (default /var/tmp/cairn-bench), CAIRNFS.
set -euo pipefail
export LC_ALL=C
root=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench-memory: needs root" >&2; exit 1; }
if [ -z "${CAIRN_BENCH_NS:-}" ]; then
  export CAIRN_BENCH_NS=1
  exec unshare -m --propagation private "$0" "$@"
fi
FILES=${FILES:-200000}
WALKS=${WALKS:-5}
BENCH_DIR=${BENCH_DIR:-/var/tmp/cairn-bench}
CAIRNFS=${CAIRNFS:-$root/target/release/cairnfs}
[ -x "$CAIRNFS" ] || (cd "$root" && cargo build --release --quiet --bin cairnfs)

lower=$BENCH_DIR/memory-$FILES
if [ ! -e "$lower/.done" ]; then
  echo "bench-memory: building $FILES files in $lower (once)" >&2
  rm -rf "$lower"
  mkdir -p "$lower"
  python3 - "$lower" "$FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
dirs = max(1, n // 200)
for d in range(dirs):
    p = os.path.join(root, f"d{d:04}")
    os.mkdir(p)
    for f in range(n // dirs):
        open(os.path.join(p, f"file-with-a-longish-name-{f:05}"), "w").close()
EOF
  touch "$lower/.done"
fi

run=$(mktemp -d /tmp/cairn-bench-memory.XXXXXX)
trap 'for m in "$run"/mnt-*; do mountpoint -q "$m" && umount -l "$m"; done; rm -rf "$run"' EXIT

# server_pid MNT: the FUSE server of a mount (the process with /dev/fuse open
# whose command line names the mountpoint).
server_pid() {
  local p
  for p in $(pgrep -f -- "$1"); do
    ls -l "/proc/$p/fd" 2> /dev/null | grep -q /dev/fuse && { echo "$p"; return; }
  done
}

measure() { # NAME PROGRAM
  local name=$1 prog=$2 mnt=$run/mnt-$1 pid i max_fds=0 sampler
  mkdir -p "$mnt" "$run/$name-upper" "$run/$name-work"
  "$prog" -o "lowerdir=$lower,upperdir=$run/$name-upper,workdir=$run/$name-work" "$mnt"
  pid=$(server_pid "$mnt")
  [ -n "$pid" ] || { echo "bench-memory: no server for $name" >&2; return 1; }
  # Most fds at any point, sampled while the walks run.
  (
    m=0
    while [ -d "/proc/$pid" ]; do
      n=$(ls "/proc/$pid/fd" 2> /dev/null | wc -l)
      [ "$n" -gt "$m" ] && { m=$n; echo "$m" > "$run/$name-maxfds"; }
      sleep 0.05
    done
  ) &
  sampler=$!
  printf '%-12s %4s %12s %12s %8s %9s\n' "$name" walk "RSS MiB" "peak MiB" fds seconds
  for ((i = 1; i <= WALKS; i++)); do
    t0=$EPOCHREALTIME
    find "$mnt" -printf '%i %s\n' > /dev/null
    t1=$EPOCHREALTIME
    awk -v name="$name" -v i="$i" -v fds="$(ls "/proc/$pid/fd" | wc -l)" -v t0="$t0" -v t1="$t1" '
      /^VmRSS:/ { rss = $2 } /^VmHWM:/ { hwm = $2 }
      END { printf "%-12s %4d %12.1f %12.1f %8d %9.3f\n", name, i, rss / 1024, hwm / 1024, fds, t1 - t0 }' \
      "/proc/$pid/status"
  done
  umount "$mnt"
  kill "$sampler" 2> /dev/null || true
  wait "$sampler" 2> /dev/null || true
  echo "$name: most open fds seen at any point: $(cat "$run/$name-maxfds" 2> /dev/null || echo '?')"
}

echo "bench-memory: $FILES files, $WALKS walks each; kernel $(uname -r)"
measure cairnfs "$CAIRNFS"
if command -v fuse-overlayfs > /dev/null; then
  measure fuse-ovl-1 "$(command -v fuse-overlayfs)"
fi
