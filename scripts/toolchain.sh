# Sourced by the scripts that build: finds the Rust toolchain when they run under sudo.
#
# rustup installs cargo under the invoking user's ~/.cargo, and Debian's sudo resets PATH and
# HOME, so `sudo scripts/test.sh` would not see it. Use that user's toolchain (as root), and
# give the build directory back to the user when the script ends.
if ! command -v cargo >/dev/null 2>&1 && [ -n "${SUDO_USER:-}" ]; then
	user_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
	if [ -x "$user_home/.cargo/bin/cargo" ]; then
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

# Gives what the build created back to the user whose toolchain it used (call from EXIT traps).
return_build_dir() {
	if [ -n "${toolchain_owner:-}" ] && [ -d "$root/target" ]; then
		chown -R "$toolchain_owner:" "$root/target" 2>/dev/null || true
	fi
}
