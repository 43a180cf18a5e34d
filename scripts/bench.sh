#!/usr/bin/env bash
# The benchmark: oci-export against `docker save`, `docker push`, skopeo, `podman save` and
# `ctr images export`, and against the SHA-256 floor, side by side on the same images in one
# run. Run as root (private engines, a loopback registry, dropping the page cache).
#
#   sudo scripts/bench.sh                 # full run (~20 GB of scratch space, about an hour)
#   sudo OE_BENCH_SCALE=small scripts/bench.sh   # a quick smoke run on small images
#   sudo OE_BENCH_PARTS="push podman" scripts/bench.sh   # only some of: export push podman containerd
#
# Results in docs/benchmarks/: results.md (the tables docs/performance.md and the README
# quote), results.json, throughput.svg, containerd.md and .json. Scratch space defaults to
# /var/tmp (OE_BENCH_DIR overrides).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scale=${OE_BENCH_SCALE:-full}
parts=" ${OE_BENCH_PARTS:-export push podman containerd} "

# No root-owned __pycache__ left in a sudo user's checkout.
export PYTHONDONTWRITEBYTECODE=1
"$root/scripts/install-deps.sh"
. "$root/scripts/toolchain.sh"
trap return_build_dir EXIT
# The benchmark alone also times ISA-L's igzip, as the reference for a faster deflate.
command -v igzip >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq isal >/dev/null; }
# With the optional ISA-L gzip encoder (install-deps.sh installed libisal-dev).
cargo build --release --quiet --features isal

scratch=$(mktemp -d "${OE_BENCH_DIR:-/var/tmp}/oe-bench.XXXXXX")
engine=$(mktemp -d /tmp/oe.XXXXXX)
cleanup() {
	"$root/scripts/dockerd.sh" stop "$engine" >/dev/null 2>&1 || true
	rm -rf "$engine" "$scratch"
	return_build_dir
}
trap cleanup EXIT

"$root/scripts/dockerd.sh" start "$engine" >"$engine/env"
DOCKER_HOST=$(sed -n 's/^export DOCKER_HOST=//p' "$engine/env")
export DOCKER_HOST
docker=/usr/bin/docker

# --- Images -------------------------------------------------------------------------------
# rootfs:    a distribution's root filesystem (this host's own binaries and libraries)
# manyfiles: tens of thousands of small real files (/usr/share)
# bigfiles:  large incompressible files in one layer
# layered:   rootfs + a layer that deletes and replaces files + a layer of new files
echo "bench: building images ($scale)" >&2
if [ "$scale" = small ]; then
	rootfs_dirs=(usr/sbin etc)
	share_dir=usr/share/perl5
	big_files=2
	big_mib=64
else
	rootfs_dirs=(usr/bin usr/sbin usr/lib/x86_64-linux-gnu usr/lib/python3 etc)
	share_dir=usr/share
	big_files=3
	big_mib=1024
fi

tar -C / --numeric-owner -cf - "${rootfs_dirs[@]}" 2>/dev/null | $docker import - bench/rootfs:1 >/dev/null
tar -C / --numeric-owner -cf - "$share_dir" 2>/dev/null | $docker import - bench/manyfiles:1 >/dev/null

mkdir -p "$scratch/big/data"
for i in $(seq 1 "$big_files"); do
	# Incompressible, like media or model weights: the worst case for everyone.
	openssl rand -out "$scratch/big/data/blob$i.bin" $((big_mib * 1024 * 1024))
done
tar -C "$scratch/big" --numeric-owner -cf - data | $docker import - bench/bigfiles:1 >/dev/null
rm -rf "$scratch/big"

mkdir -p "$scratch/ctx"
cp /bin/busybox "$scratch/ctx/busybox"
cat >"$scratch/ctx/Dockerfile" <<'DOCKERFILE'
FROM bench/rootfs:1
COPY busybox /busybox
# Deletes files of the lower layer (whiteouts) and replaces a directory (opaque dir).
RUN ["/busybox", "sh", "-c", "/busybox rm -rf /usr/sbin /etc/ssl && /busybox mkdir -p /etc/ssl && /busybox cp /busybox /etc/ssl/bb"]
RUN ["/busybox", "sh", "-c", "/busybox mkdir /app && for i in $(/busybox seq 1 2000); do /busybox head -c $((i * 37 % 9000 + 100)) /busybox > /app/f$i; done"]
DOCKERFILE
DOCKER_BUILDKIT=0 $docker build -q --network=none -t bench/layered:1 "$scratch/ctx" >/dev/null
rm -rf "$scratch/ctx"

# Docker's overlay2 store (plain and compressed exports), push, and containers-storage; a run
# of only some parts keeps the other sections of results.json as they were.
bench_args=()
if [[ $parts == *" export "* ]]; then
	bench_args+=(--compress bench/rootfs:1 --compress bench/manyfiles:1 --compress bench/layered:1
		bench/rootfs:1 bench/manyfiles:1 bench/bigfiles:1 bench/layered:1)
fi
if [[ $parts == *" push "* ]]; then
	bench_args+=(--push bench/rootfs:1 --push bench/bigfiles:1 --push bench/layered:1)
fi
if [[ $parts == *" podman "* ]]; then
	# The same images in a private podman store (containers-storage), for `podman save`.
	podman_store=$(mktemp -d "$scratch/podman.XXXXXX")
	for image in bench/rootfs:1 bench/manyfiles:1 bench/bigfiles:1 bench/layered:1; do
		$docker save "$image" | python3 "$root/scripts/bench_podman.py" --dir "$podman_store" --load
	done
	bench_args+=(--podman "$podman_store")
fi
if [ ${#bench_args[@]} -gt 0 ]; then
	python3 "$root/scripts/bench.py" \
		--merge "$root/docs/benchmarks/results.json" \
		--binary "$root/target/release/oci-export" \
		--data-root "$engine/data" \
		--scratch "$scratch" \
		--out "$root/docs/benchmarks" \
		"${bench_args[@]}"
fi

# containerd's image store (Docker 29's default): the same images imported into a private
# containerd as Docker 29 fills it, `ctr images export` against oci-export, and the floor.
if [[ $parts == *" containerd "* ]]; then
	python3 "$root/scripts/bench_containerd.py" --binary "$root/target/release/oci-export" \
		--scratch "$scratch" --json "$root/docs/benchmarks/containerd.json" \
		bench/rootfs:1 bench/bigfiles:1 bench/layered:1 >"$scratch/containerd.md"
	# Only a finished run replaces the committed table.
	mv "$scratch/containerd.md" "$root/docs/benchmarks/containerd.md"
	cat "$root/docs/benchmarks/containerd.md"
fi
