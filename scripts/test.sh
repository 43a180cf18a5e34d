#!/usr/bin/env bash
# The project's test command: installs what the tests need, starts two private Docker engines
# (never the system daemon), builds the test images, runs every test, and cleans up.
#
#   scripts/test.sh                  # everything (as root, or re-run under sudo)
#   scripts/test.sh engine           # extra arguments go to `cargo test` (a name filter)
#   scripts/test.sh --test engine    # only these test targets (and no unit tests)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Engines, mounts and packages need root. As a user, run again under sudo (which keeps using
# this user's Rust toolchain, see toolchain.sh); CI=true must survive sudo's clean environment.
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		exec sudo --preserve-env=CI,TMPDIR "$root/scripts/test.sh" "$@"
	fi
	echo "test.sh: the tests start private Docker engines and need root; run this as root" >&2
	exit 1
fi

# No root-owned __pycache__ left in a sudo user's checkout.
export PYTHONDONTWRITEBYTECODE=1
"$root/scripts/install-deps.sh"
. "$root/scripts/toolchain.sh"

work=$(mktemp -d /tmp/oe.XXXXXX)
cleanup() {
	[ -f "$work/registry.pid" ] && kill "$(cat "$work/registry.pid")" 2>/dev/null || true
	"$root/scripts/dockerd.sh" stop "$work/a" >/dev/null 2>&1 || true
	"$root/scripts/dockerd.sh" stop "$work/b" >/dev/null 2>&1 || true
	rm -rf "$work"
	return_build_dir
}
trap cleanup EXIT
# Interrupted or timed out: still stop the engines (the EXIT trap runs on `exit`).
trap 'exit 130' INT
trap 'exit 143' TERM

# Tests run with every optional encoder built in (the ISA-L one needs libisal-dev, installed
# above); the unit tests also run once without, to check what a default build says.
features=(--features isal)

# Which targets to test: the library, binaries and tests (benches are not tests, they run with
# `cargo bench`), unless the arguments choose targets themselves. Cargo takes the union of
# target options, so `--tests` beside `--test NAME` would still run every test target.
targets=(--lib --bins --tests)
for arg in "$@"; do
	[ "$arg" = -- ] && break
	case $arg in
	--lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --examples | --example | \
		--example=* | --benches | --bench | --bench=* | --all-targets | --doc)
		targets=()
		;;
	esac
done

# Build first, so the compile does not count against the engines' start-up wait.
cargo build --all-targets --quiet "${features[@]}"
if [ ${#targets[@]} -gt 0 ]; then
	cargo test --lib --quiet
fi

echo "test.sh: starting two private Docker engines under $work" >&2
"$root/scripts/dockerd.sh" start "$work/a" >"$work/a.env"
"$root/scripts/dockerd.sh" start "$work/b" >"$work/b.env"
first=$(sed -n 's/^export DOCKER_HOST=//p' "$work/a.env")
second=$(sed -n 's/^export DOCKER_HOST=//p' "$work/b.env")

# A real registry on loopback, for the push/pull round trip.
registry_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$registry_port
log:
  level: error
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
echo $! >"$work/registry.pid"
registry_up=false
for _ in $(seq 1 50); do
	if python3 -c "import socket; socket.create_connection(('127.0.0.1', $registry_port), 0.2)" 2>/dev/null; then
		registry_up=true
		break
	fi
	if ! kill -0 "$(cat "$work/registry.pid")" 2>/dev/null; then
		break
	fi
	sleep 0.2
done
if ! $registry_up; then
	echo "test.sh: the registry did not start listening on 127.0.0.1:$registry_port; its log:" >&2
	cat "$work/registry.log" >&2
	exit 1
fi

echo "test.sh: building test images" >&2
DOCKER_HOST="$first" python3 tests/support/make_images.py \
	--list "$work/images.txt" --expect "$work/expect.json"

export OE_TEST_DATA_ROOT="$work/a/data"
export OE_TEST_DOCKER_HOST="$first"
export OE_TEST_SECOND_DOCKER_HOST="$second"
export OE_TEST_EXPECT="$work/expect.json"
export OE_TEST_REGISTRY="127.0.0.1:$registry_port"
cargo test "${features[@]}" ${targets[@]+"${targets[@]}"} "$@"
