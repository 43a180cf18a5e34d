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

# Shared helpers: usage, die, live_pid, wait_gone, stop_pid, shim_pids, mounts_under.
script_name=containerd.sh
. "$(dirname "$0")/daemon-lib.sh"

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
			echo "$script_name: containerd exited during startup; log tail:" >&2
			tail -n 30 "$dir/containerd.log" >&2 || true
			exit 1
		fi
		if [ "$i" -ge $((START_TIMEOUT * 5)) ]; then
			echo "$script_name: containerd not ready after ${START_TIMEOUT}s; log tail:" >&2
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
		umount "$m" 2>/dev/null || umount -l "$m" || echo "$script_name: cannot unmount $m" >&2
	done
	rm -f "$dir/containerd.pid"
}

[ $# -eq 2 ] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" ;;
*) usage ;;
esac
