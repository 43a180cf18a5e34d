# Sourced by the scripts that build: finds the Rust toolchain when they run under sudo.
#
# rustup installs cargo under the invoking user's ~/.cargo, and Debian's sudo resets PATH and
# HOME, so `sudo scripts/test.sh` would not see it (or would find an older packaged cargo
# first). Use that user's toolchain (as root), and give back to the user what the build
# creates in the project's target/ and in their cargo home (EXIT traps call
# return_build_dir).
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
	user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6) || user_home=
	if [ -n "$user_home" ] && [ -x "$user_home/.cargo/bin/cargo" ]; then
		export PATH="$user_home/.cargo/bin:$PATH"
		export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}"
		export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
		toolchain_owner=$SUDO_USER
	fi
fi
if ! command -v cargo >/dev/null 2>&1; then
	echo "cargo not found: install a Rust toolchain, 1.89 or newer (https://rustup.rs)" >&2
	exit 1
fi

return_build_dir() {
	[ -n "${toolchain_owner:-}" ] || return 0
	for dir in "$root/target" "$CARGO_HOME/registry" "$CARGO_HOME/git"; do
		if [ -d "$dir" ]; then chown -R "$toolchain_owner:" "$dir" 2>/dev/null || true; fi
	done
	chown "$toolchain_owner:" "$CARGO_HOME"/.global-cache* "$CARGO_HOME"/.package-cache* 2>/dev/null || true
	return 0
}
