#!/usr/bin/env bash
# Manage a private, throw-away containerd rooted in one directory.
#
#   scripts/containerd.sh start DIR   # prints "export CONTAINERD_ADDRESS=DIR/containerd.sock"
#   scripts/containerd.sh stop DIR    # stops it and unmounts leftovers, so `rm -rf DIR` works
#
# Typical use:
#   dir=$(mktemp -d /tmp/oe.XXXXXX)
#   eval "$(scripts/containerd.sh start "$dir")"
#   ctr -n moby images import image.tar    # ctr reads CONTAINERD_ADDRESS
#   ... read "$dir/root/io.containerd.metadata.v1.bolt/meta.db" ...
#   scripts/containerd.sh stop "$dir" && rm -rf "$dir"
#
# Layout under DIR: root/ (containerd's --root: content store, meta.db, snapshotters), state/
# (its --state), containerd.sock, config.toml (our own, so /etc/containerd/config.toml is never
# read), containerd.pid and containerd.log. The config turns off what image tests never use:
# the CRI plugin (which would want CNI, a sandbox image and a stream server), tracing, and the
# snapshotters other than overlayfs and native. Nothing outside DIR is written except the
# transient shim sockets of containers, which image imports do not start.
set -euo pipefail

START_TIMEOUT=${OE_CONTAINERD_TIMEOUT:-30}
STOP_TIMEOUT=20

usage() {
	echo "usage: $0 start|stop DIR" >&2
	exit 2
}

die() {
	echo "containerd.sh: $*" >&2
	exit 1
}

# Print the pid stored in pidfile $1 if that process is alive and named $2
# (the name check guards against a recycled pid from a stale pidfile).
live_pid() {
	local pid
	[ -s "$1" ] || return 1
	pid=$(cat "$1")
	case $pid in '' | *[!0-9]*) return 1 ;; esac
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
	echo "$pid"
}

# Wait up to $2 seconds for pid $1 to exit.
wait_gone() {
	local i=0
	while kill -0 "$1" 2>/dev/null; do
		[ "$i" -ge $(($2 * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

# SIGTERM, then SIGKILL if it does not exit in time.
stop_pid() {
	local pid=$1 what=$2
	kill -TERM "$pid" 2>/dev/null || return 0
	if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
		echo "containerd.sh: $what ($pid) ignored SIGTERM, sending SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" 5 || true
	fi
}

# Shims started by this containerd (only if a test ran containers), found by its socket
# path in their command line, so other containerds are untouched.
shim_pids() {
	local sock=$1 p
	for p in /proc/[0-9]*; do
		[ -r "$p/cmdline" ] || continue
		if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$sock"; then
			echo "${p#/proc/}"
		fi
	done
}

# Mount points at or below DIR, deepest first. Field 5 of mountinfo is the mount
# point with spaces etc. octal-escaped; our DIRs come from mktemp so need no unescaping.
mounts_under() {
	awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
		awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

cmd_start() {
	local dir sock pid i
	dir=$(realpath -m "$1")
	sock=$dir/containerd.sock
	# sun_path is 108 bytes incl. NUL; the longest socket is DIR/containerd.sock.ttrpc.
	if [ ${#dir} -gt 80 ]; then
		die "DIR path too long for unix sockets (${#dir} > 80 bytes): $dir"
	fi
	mkdir -p "$dir/root" "$dir/state"
	if pid=$(live_pid "$dir/containerd.pid" containerd); then
		die "a containerd is already running for $dir (pid $pid)"
	fi

	cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"
TOML

	# setsid: detach from the caller's process group so Ctrl-C in a test does not kill it.
	# This script has no job control, so the job is no group leader and setsid does not
	# fork: $! is containerd itself.
	setsid containerd --config "$dir/config.toml" </dev/null >"$dir/containerd.log" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/containerd.pid"

	i=0
	until ctr --address "$sock" version >/dev/null 2>&1; do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "containerd.sh: containerd exited during startup; log tail:" >&2
			tail -n 30 "$dir/containerd.log" >&2 || true
			exit 1
		fi
		if [ "$i" -ge $((START_TIMEOUT * 5)) ]; then
			echo "containerd.sh: containerd not ready after ${START_TIMEOUT}s; log tail:" >&2
			tail -n 30 "$dir/containerd.log" >&2 || true
			cmd_stop "$dir" >&2 || true
			exit 1
		fi
		sleep 0.2
		i=$((i + 1))
	done
	echo "export CONTAINERD_ADDRESS=$sock"
}

cmd_stop() {
	local dir=$1 pid m
	[ -d "$dir" ] || return 0
	dir=$(cd "$dir" && pwd -P)

	if pid=$(live_pid "$dir/containerd.pid" containerd); then
		stop_pid "$pid" containerd
	fi
	for pid in $(shim_pids "$dir/containerd.sock"); do
		stop_pid "$pid" containerd-shim
	done
	# overlayfs snapshot mounts (a view or a container left mounted) and any other leftovers.
	for m in $(mounts_under "$dir"); do
		umount "$m" 2>/dev/null || umount -l "$m" || echo "containerd.sh: cannot unmount $m" >&2
	done
	rm -f "$dir/containerd.pid"
}

[ $# -eq 2 ] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" ;;
*) usage ;;
esac
