#!/usr/bin/env bash
# Install what the integration tests need (Debian/Ubuntu, run as root). Idempotent and
# quiet when everything is already present; apt only runs if something is missing.
# The Rust toolchain is not an apt package here (rustup, for a recent enough Rust): the
# scripts that build find it through toolchain.sh.
set -euo pipefail

PKGS=(docker.io skopeo umoci podman docker-registry pigz zstd tar-split busybox-static apache2-utils python3 openssl ca-certificates libisal-dev pkg-config gcc libc6-dev)

missing=()
# htpasswd (apache2-utils) makes the bcrypt users of the registry tests' htpasswd registry.
for cmd in dockerd containerd runc skopeo umoci podman docker-registry htpasswd pigz zstd tar-split python3 openssl gcc; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
# Absolute paths: /usr/local/bin/docker may shadow the Debian CLI. Test images copy
# /bin/busybox into an empty rootfs, so it must be the static build (busybox-static).
[ -x /usr/bin/docker ] || missing+=(/usr/bin/docker)
# The ISA-L gzip encoder (cargo feature `isal`) builds against the system library.
pkg-config --exists libisal 2>/dev/null || missing+=(libisal-dev)
if ! [ -x /bin/busybox ] || LC_ALL=C ldd /bin/busybox >/dev/null 2>&1; then
	missing+=("static /bin/busybox")
fi

if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps: missing ${missing[*]}; installing ${PKGS[*]}" >&2
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: must run as root to install packages" >&2
		exit 1
	fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi
