#!/usr/bin/env bash
# with-watchdog.sh SECONDS CMD...: runs CMD; if it is still running after
# SECONDS, aborts the FUSE connections mounted in CMD's mount namespace (a
# deadlocked server leaves callers in uninterruptible sleep, which plain
# `timeout` cannot end), kills CMD and exits 124. Never leaves a run hanging.
set -u
limit=$1; shift
abort_fuse() {
  mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
  # FUSE mounts seen by CMD (field 3 of mountinfo is MAJOR:MINOR; the
  # connection is named by the minor).
  for m in $(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i+1) ~ /^fuse/) { split($3, d, ":"); print d[2] } break } }' \
             "/proc/$pid/mountinfo" 2>/dev/null | sort -u); do
    [ -e "/sys/fs/fuse/connections/$m/abort" ] && echo 1 > "/sys/fs/fuse/connections/$m/abort" 2>/dev/null
  done
}
setsid "$@" &
pid=$!
# The timer's sleep must not hold the caller's stdout/stderr open (a caller
# piping our output would otherwise wait for the full limit), and dies with
# the watchdog subshell.
( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  sleep "$limit" </dev/null >/dev/null 2>&1 & nap=$!; wait "$nap"
  if kill -0 "$pid" 2>/dev/null; then
    echo "watchdog: '$*' still running after ${limit}s; aborting FUSE connections" >&2
    abort_fuse; sleep 2; kill -KILL -- -"$pid" 2>/dev/null; exit 124; fi ) &
dog=$!
wait "$pid"; rc=$?
kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
exit $rc
