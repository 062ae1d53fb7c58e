#!/usr/bin/env bash
# pjdfstest.sh: runs pjdfstest (as root) against several targets in one run
# and compares cairnfs's failures with fuse-tests/pjdfstest-expected-failures.txt.
#
# Targets (PJD_TARGETS, comma-separated; default all four):
#   plain           a plain directory on the backing filesystem
#   overlay         kernel overlayfs
#   fuse-overlayfs  fuse-overlayfs (the Debian package, 1.10)
#   cairnfs         ${CAIRNFS:-target/release/cairnfs} (built if missing)
# Every overlay target tests in MNT/base, a directory that comes from the
# lower layer, so the merged-directory paths are exercised (plain: DIR/base).
#
# Output (PJD_OUT, default target/pjdfstest): TARGET.log (full pjdfstest
# output), TARGET.failed (failing test names, sorted), TARGET.failures.log
# (the failing tests with pjdfstest's messages), summary.txt (the table).
#
# Exit status: 0 when cairnfs fails only tests in the expected-failures list
# (or cairnfs was not among the targets); 1 when it fails a test not in the
# list, or a target could not be run. Entries of the list that now pass are
# reported (the list may only shrink: delete them).
#
# Other knobs: PJD_TIMEOUT (seconds per target, default 900; on expiry the
# target's FUSE connection is aborted), PJD_KEEP=1 (keep the layers),
# PJD_FILTER (test-name filter passed to pjdfstest), PJDFSTEST (binary).
#
# Never hangs and never leaves mounts behind: the whole run happens in a
# private mount namespace under scripts/with-watchdog.sh, each target has its
# own watchdog that aborts only that target's FUSE connection, and an EXIT
# trap unmounts everything it mounted and stops the daemons it started.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

TARGETS=${PJD_TARGETS:-plain,overlay,fuse-overlayfs,cairnfs}
PJD_TIMEOUT=${PJD_TIMEOUT:-900}
PJD_OUT=${PJD_OUT:-target/pjdfstest}
EXPECTED=fuse-tests/pjdfstest-expected-failures.txt
if [ -z "${CAIRNFS:-}" ]; then
  CAIRNFS=${CARGO_TARGET_DIR:-target}/release/cairnfs
  default_cairnfs=1
else
  default_cairnfs=0
fi
if [ -z "${PJDFSTEST:-}" ]; then
  PJDFSTEST=$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")
fi

die() { echo "pjdfstest.sh: $*" >&2; exit 1; }

IFS=, read -r -a targets <<< "$TARGETS"
for t in "${targets[@]}"; do
  case $t in plain|overlay|fuse-overlayfs|cairnfs) ;; *) die "unknown target '$t' (plain,overlay,fuse-overlayfs,cairnfs)";; esac
done
has_target() { local t; for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- outer part
if [ "${_PJD_INNER:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || die "must run as root (pjdfstest switches uids; mounts need root)"
  [ -x "$PJDFSTEST" ] || die "pjdfstest not found (run scripts/setup.sh or cargo install pjdfstest --locked)"
  command -v unshare >/dev/null || die "unshare missing (scripts/setup.sh)"
  if has_target fuse-overlayfs; then
    command -v fuse-overlayfs >/dev/null || die "fuse-overlayfs missing (scripts/setup.sh)"
  fi
  if has_target cairnfs && [ ! -x "$CAIRNFS" ]; then
    [ "$default_cairnfs" = 1 ] || die "CAIRNFS=$CAIRNFS is not an executable"
    echo "pjdfstest.sh: building $CAIRNFS" >&2
    cargo build --release --bin cairnfs
    [ -x "$CAIRNFS" ] || die "build did not produce $CAIRNFS"
  fi
  # The second unprivileged user of the ownership tests (the first is nobody).
  id pjdtest >/dev/null 2>&1 || useradd -M -U -s /usr/sbin/nologin pjdtest
  mkdir -p "$PJD_OUT"
  CAIRNFS=$(realpath "$CAIRNFS") PJD_OUT=$(realpath "$PJD_OUT") PJDFSTEST=$(realpath "$PJDFSTEST")
  export CAIRNFS PJD_OUT PJDFSTEST PJD_TARGETS=$TARGETS PJD_TIMEOUT
  total=$(( PJD_TIMEOUT * ${#targets[@]} + 120 ))
  _PJD_INNER=1 exec "$repo/scripts/with-watchdog.sh" "$total" \
    unshare -m --propagation private "$repo/scripts/pjdfstest.sh"
fi

# ---------------------------------------------------------------- inner part
# Running in a private mount namespace from here on.
work=$(mktemp -d /var/tmp/cairn-pjd.XXXXXX)
chmod 755 "$work"   # pjdfstest switches to unprivileged uids: they must reach base/
mounts=()   # mountpoints to unmount, in mount order
daemons=()  # pids of FUSE servers we started

mounted() { awk -v m="$1" '$5 == m { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# Aborts the FUSE connection of a mount (unblocks callers stuck on a
# deadlocked server) and detaches it.
abort_mount() {
  local m=$1 minor
  mountpoint -q /sys/fs/fuse/connections 2>/dev/null \
    || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
  minor=$(awk -v m="$m" '$5 == m { split($3, d, ":"); print d[2] }' /proc/self/mountinfo | tail -1)
  if [ -n "$minor" ] && [ -e "/sys/fs/fuse/connections/$minor/abort" ]; then
    echo 1 > "/sys/fs/fuse/connections/$minor/abort" 2>/dev/null || true
  fi
  umount -l "$m" 2>/dev/null || true
}

unmount_one() {
  local m=$1 i
  mounted "$m" || return 0
  for i in 1 2 3; do
    timeout 10 umount "$m" 2>/dev/null && break
    sleep 0.5
  done
  mounted "$m" && abort_mount "$m"
  mounted "$m" && umount -l "$m" 2>/dev/null
  true
}

cleanup() {
  local rc=$? i p
  trap - EXIT INT TERM
  for (( i = ${#mounts[@]} - 1; i >= 0; i-- )); do unmount_one "${mounts[i]}"; done
  for p in "${daemons[@]}"; do
    for i in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if grep -q " $work/" /proc/self/mountinfo; then
    echo "pjdfstest.sh: mounts left under $work, not deleting it" >&2
  elif [ "${PJD_KEEP:-0}" = 1 ]; then
    echo "pjdfstest.sh: layers kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Secondary filesystem for the cross-device (EXDEV) tests.
mkdir -p "$work/second"
mount -t tmpfs -o mode=755 tmpfs "$work/second"
mounts+=("$work/second")

cat > "$work/pjdfstest.toml" <<'EOF'
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}
[settings]
naptime = 0.01
allow_remount = false
expected_failures = []
[dummy_auth]
entries = [["nobody", "nogroup"], ["pjdtest", "pjdtest"]]
EOF

# Layers for an overlay target: lower/base, upper, work, mnt.
make_layers() {
  local d=$work/$1
  mkdir -p "$d/lower/base" "$d/upper" "$d/work" "$d/mnt"
  chmod 755 "$d" "$d/lower" "$d/lower/base" "$d/upper" "$d/work" "$d/mnt"
}

# Starts a FUSE server in the foreground (so we know its pid), then waits
# until the mount shows up in mountinfo (never stat()s the mount itself).
start_fuse() {
  local name=$1 mnt=$2; shift 2
  "$@" > "$PJD_OUT/$name.server.log" 2>&1 &
  local pid=$!
  daemons+=("$pid")
  mounts+=("$mnt")
  local i
  for i in $(seq 200); do
    mounted "$mnt" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "pjdfstest.sh: $name exited before mounting:" >&2; cat "$PJD_OUT/$name.server.log" >&2; return 1; }
    sleep 0.1
  done
  echo "pjdfstest.sh: $name did not mount within 20s" >&2
  return 1
}

# Prepares a target; sets $dir to the directory to test in. (Runs in this
# shell, not in $(...), so that mounts and daemons are recorded for cleanup.)
setup_target() {
  local t=$1 d=$work/$1
  case $t in
    plain)
      mkdir -p "$d/base"; chmod 755 "$d" "$d/base"
      dir=$d/base ;;
    overlay)
      make_layers "$t"
      mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/mnt" >&2
      mounts+=("$d/mnt")
      dir=$d/mnt/base ;;
    fuse-overlayfs)
      make_layers "$t"
      start_fuse "$t" "$d/mnt" fuse-overlayfs -f \
        -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work,allow_other" "$d/mnt" || return 1
      dir=$d/mnt/base ;;
    cairnfs)
      make_layers "$t"
      start_fuse "$t" "$d/mnt" "$CAIRNFS" -f \
        -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work,allow_other" "$d/mnt" || return 1
      dir=$d/mnt/base ;;
  esac
}

# Runs pjdfstest on one target with a watchdog that aborts only this
# target's FUSE connection.
run_target() {
  local t=$1 dir=$2 mnt=$work/$1/mnt log=$PJD_OUT/$1.log
  local filter=()
  [ -n "${PJD_FILTER:-}" ] && filter=("$PJD_FILTER")
  ( cd / && RUST_BACKTRACE=0 exec "$PJDFSTEST" -c "$work/pjdfstest.toml" -p "$dir" \
      -s "$work/second" "${filter[@]}" ) > "$log" 2>&1 < /dev/null &
  local pid=$! start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS - start > PJD_TIMEOUT )); then
      echo "pjdfstest.sh: $t still running after ${PJD_TIMEOUT}s; aborting" | tee -a "$log" >&2
      [ "$t" = plain ] || abort_mount "$mnt"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 1
  done
  wait "$pid" 2>/dev/null || true
}

# Table row and failure files from a pjdfstest log.
summarize() {
  local t=$1 log=$PJD_OUT/$1.log
  awk '/^[A-Za-z0-9_:]+ +FAILED$/ { print $1 }' "$log" | sort > "$PJD_OUT/$t.failed"
  # Each failing test with the indented message lines that follow it.
  awk '/^[A-Za-z0-9_:]+ +(ok|skipped|FAILED)$/ { show = ($NF == "FAILED") }
       /^Summary:/ { show = 0 }
       show' "$log" > "$PJD_OUT/$t.failures.log"
  local s
  s=$(grep -E '^Summary: ' "$log" | tail -1 || true)
  if [ -z "$s" ]; then
    printf '%-16s %7s %7s %8s  (no summary: see %s)\n' "$t" - - - "$log"
    return 1
  fi
  local failed skipped passed
  failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<< "$s")
  skipped=$(sed -E 's/.* ([0-9]+) skipped.*/\1/' <<< "$s")
  passed=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<< "$s")
  printf '%-16s %7s %7s %8s\n' "$t" "$passed" "$failed" "$skipped"
}

status=0
rows=()
for t in "${targets[@]}"; do
  echo "pjdfstest.sh: running $t" >&2
  dir=""
  if setup_target "$t"; then
    run_target "$t" "$dir"
  else
    echo "pjdfstest.sh: could not set up $t" > "$PJD_OUT/$t.log"
  fi
  # Unmount now: the next target gets the machine to itself.
  [ "$t" = plain ] || unmount_one "$work/$t/mnt"
  if row=$(summarize "$t"); then rows+=("$row"); else rows+=("$row"); status=1; fi
done

{
  printf '%-16s %7s %7s %8s\n' target passed failed skipped
  printf '%s\n' "${rows[@]}"
} | tee "$PJD_OUT/summary.txt"
echo "failing test names: $PJD_OUT/TARGET.failed; messages: $PJD_OUT/TARGET.failures.log"

if has_target plain && has_target cairnfs; then
  worse=$(comm -13 "$PJD_OUT/plain.failed" "$PJD_OUT/cairnfs.failed" | wc -l)
  echo "cairnfs fails $worse test(s) that pass (or are skipped) on the plain directory"
fi

if has_target cairnfs && [ -s "$PJD_OUT/cairnfs.log" ] && grep -q '^Summary: ' "$PJD_OUT/cairnfs.log"; then
  [ -f "$EXPECTED" ] || die "$EXPECTED missing"
  sed -e 's/#.*//' -e 's/[[:space:]]//g' "$EXPECTED" | { grep -v '^$' || true; } | sort -u > "$work/expected"
  unexpected=$(comm -23 "$PJD_OUT/cairnfs.failed" "$work/expected")
  if [ -z "${PJD_FILTER:-}" ]; then
    fixed=$(comm -13 "$PJD_OUT/cairnfs.failed" "$work/expected")
  else
    fixed=""  # a filtered run says nothing about the tests it left out
  fi
  if [ -n "$fixed" ]; then
    echo "cairnfs now passes these expected failures; delete them from $EXPECTED:"
    sed 's/^/  /' <<< "$fixed"
  fi
  if [ -n "$unexpected" ]; then
    echo "FAIL: cairnfs fails tests that are not in $EXPECTED:"
    awk 'NR == FNR { want[$1] = 1; next }
         /^[A-Za-z0-9_:]+ +FAILED$/ { show = ($1 in want) }
         show { print "  " $0 }' <(echo "$unexpected") "$PJD_OUT/cairnfs.failures.log"
    status=1
  else
    echo "cairnfs: no unexpected failures"
  fi
elif has_target cairnfs; then
  echo "FAIL: cairnfs was not tested (see $PJD_OUT/cairnfs.log)"
  status=1
fi
exit "$status"
