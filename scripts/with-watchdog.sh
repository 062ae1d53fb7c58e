#!/usr/bin/env bash
# with-watchdog.sh SECONDS CMD...: runs CMD; if it is still running after
# SECONDS, aborts every FUSE connection (a deadlocked server leaves callers
# in uninterruptible sleep, which plain `timeout` cannot end), kills CMD and
# exits 124. Never leaves a test run hanging.
set -u
limit=$1; shift
abort_fuse() {
  mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null || true
  for a in /sys/fs/fuse/connections/*/abort; do
    [ -e "$a" ] && echo 1 > "$a" 2>/dev/null
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
    abort_fuse; sleep 2; kill -KILL -- -"$pid" 2>/dev/null; fi ) &
dog=$!
wait "$pid"; rc=$?
kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
exit $rc
