#!/usr/bin/env bash
# Manage a private, throw-away Docker engine rooted in one directory.
#
#   scripts/dockerd.sh start DIR   # prints "export DOCKER_HOST=unix://DIR/docker.sock"
#   scripts/dockerd.sh stop DIR    # stops it and unmounts leftovers, so `rm -rf DIR` works
#
# Typical use:
#   dir=$(mktemp -d /tmp/oe.XXXXXX)
#   eval "$(scripts/dockerd.sh start "$dir")"
#   ... /usr/bin/docker images ...
#   scripts/dockerd.sh stop "$dir" && rm -rf "$dir"
#
# Several engines can run side by side: dockerd's own managed containerd keeps its
# socket, state and config under --exec-root/--data-root, so distinct DIRs never clash.
# Nothing outside DIR is written except transient shim sockets in /run/containerd/s
# (named by a hash of DIR's containerd socket) and an empty /var/run/docker/plugins.
set -euo pipefail

# The Debian CLI; /usr/local/bin/docker may be a newer client without buildx.
DOCKER=/usr/bin/docker
START_TIMEOUT=${OE_DOCKERD_TIMEOUT:-60}
STOP_TIMEOUT=20

# Shared helpers: usage, die, live_pid, wait_gone, stop_pid, shim_pids, mounts_under.
script_name=dockerd.sh
. "$(dirname "$0")/daemon-lib.sh"

# Cgroup dirs of this engine's containers (cgroupfs driver: <controller>/docker/<id>).
# dockerd normally removes them; after an unclean exit they may still hold processes.
container_cgroups() {
	local c g id
	[ -d "$1/data/containers" ] || return 0
	for c in "$1"/data/containers/*/; do
		[ -d "$c" ] || continue
		id=$(basename "$c")
		for g in /sys/fs/cgroup/docker/"$id" /sys/fs/cgroup/*/docker/"$id"; do
			if [ -d "$g" ]; then echo "$g"; fi
		done
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
	sock=$dir/docker.sock
	# sun_path is 108 bytes incl. NUL; the longest socket is
	# DIR/exec/containerd/containerd.sock.ttrpc (DIR + 38 bytes).
	if [ ${#dir} -gt 69 ]; then
		die "DIR path too long for unix sockets (${#dir} > 69 bytes): $dir"
	fi
	mkdir -p "$dir"
	if pid=$(live_pid "$dir/docker.pid" dockerd); then
		die "an engine is already running for $dir (pid $pid)"
	fi

	# Own config file: ignore /etc/docker/daemon.json and keep the trust key out of /etc/docker.
	printf '{"deprecated-key-path": "%s/key.json"}\n' "$dir" >"$dir/daemon.json"

	# --ip-forward=false: do not flip the host's net.ipv4.ip_forward sysctl.
	# --shutdown-timeout: leftover test containers need not get a graceful 15 s.
	# setsid: detach from the caller's process group so Ctrl-C in a test does not kill it.
	# This script has no job control, so the job is no group leader and setsid does not
	# fork: $! is dockerd itself.
	setsid dockerd \
		--config-file "$dir/daemon.json" \
		--data-root "$dir/data" \
		--exec-root "$dir/exec" \
		--pidfile "$dir/docker.pid" \
		-H "unix://$sock" \
		--bridge=none \
		--iptables=false \
		--ip-masq=false \
		--ip-forward=false \
		--storage-driver=overlay2 \
		--shutdown-timeout=3 \
		</dev/null >"$dir/dockerd.log" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/dockerd.launcher.pid"

	i=0
	until "$DOCKER" -H "unix://$sock" info >/dev/null 2>&1; do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "$script_name: dockerd exited during startup; log tail:" >&2
			tail -n 30 "$dir/dockerd.log" >&2 || true
			exit 1
		fi
		if [ "$i" -ge $((START_TIMEOUT * 5)) ]; then
			echo "$script_name: dockerd not ready after ${START_TIMEOUT}s; log tail:" >&2
			tail -n 30 "$dir/dockerd.log" >&2 || true
			cmd_stop "$dir" >&2 || true
			exit 1
		fi
		sleep 0.2
		i=$((i + 1))
	done
	echo "export DOCKER_HOST=unix://$sock"
}

cmd_stop() {
	local dir=$1 pid m csock cgroups
	[ -d "$dir" ] || return 0
	dir=$(cd "$dir" && pwd -P)
	csock=$dir/exec/containerd/containerd.sock

	# dockerd stops its managed containerd itself on a clean SIGTERM.
	if pid=$(live_pid "$dir/docker.pid" dockerd) ||
		pid=$(live_pid "$dir/dockerd.launcher.pid" dockerd); then
		stop_pid "$pid" dockerd
	fi
	# Fallbacks for an unclean exit: the containerd it started, then orphaned shims.
	if pid=$(live_pid "$dir/exec/containerd/containerd.pid" containerd); then
		stop_pid "$pid" containerd
	fi
	for pid in $(shim_pids "$csock"); do
		stop_pid "$pid" containerd-shim
	done
	cgroups=$(container_cgroups "$dir")
	if [ -n "$cgroups" ]; then
		for pid in $(for m in $cgroups; do cat "$m/cgroup.procs"; done | sort -u); do
			kill -KILL "$pid" 2>/dev/null || true
		done
		sleep 0.5
		for m in $cgroups; do
			rmdir "$m" 2>/dev/null || true
		done
	fi

	# overlay "merged" mounts, shm mounts and the private bind of the data root.
	for m in $(mounts_under "$dir"); do
		umount "$m" 2>/dev/null || umount -l "$m" || echo "$script_name: cannot unmount $m" >&2
	done
	rm -f "$dir/docker.pid" "$dir/dockerd.launcher.pid"
}

[ $# -eq 2 ] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" ;;
*) usage ;;
esac
