# Sourced by dockerd.sh and containerd.sh: what managing a private daemon takes, whichever it
# is. The sourcing script sets script_name (for messages) and STOP_TIMEOUT.

usage() {
	echo "usage: $0 start|stop DIR" >&2
	exit 2
}

die() {
	echo "$script_name: $*" >&2
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
		echo "$script_name: $what ($pid) ignored SIGTERM, sending SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" 5 || true
	fi
}

# Shims of the containerd listening on socket $1 (only if containers ran), found by that path
# in their command line, so other engines' shims are untouched.
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
