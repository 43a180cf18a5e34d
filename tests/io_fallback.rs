//! io_uring refused, as inside a container under Docker's default seccomp profile: the plain
//! engine must take over by itself (`--io auto`) with identical bytes, and `--io uring` must say
//! clearly that io_uring is unavailable.
//!
//! The seccomp filter is written for x86_64; elsewhere the test skips (and fails under CI).

mod harness;

#[cfg(not(target_arch = "x86_64"))]
#[test]
fn plain_reads_take_over_when_io_uring_is_refused() {
    harness::skip("the seccomp filter that refuses io_uring is written for x86_64 only");
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::harness::*;

    /// Installs a seccomp filter that makes `io_uring_setup` fail with EPERM, as Docker's default
    /// profile does, in the child just before it runs oci-export.
    fn refuse_io_uring(cmd: &mut Command) -> &mut Command {
        const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
        const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
        const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
        const LD_ABS_W: u16 = 0x20;
        const JEQ_K: u16 = 0x15;
        const RET_K: u16 = 0x06;
        let stmt = |code, k| libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let jump = |code, k, jt, jf| libc::sock_filter { code, jt, jf, k };
        let filter = [
            stmt(LD_ABS_W, 4), // seccomp_data.arch
            jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(RET_K, SECCOMP_RET_ALLOW),
            stmt(LD_ABS_W, 0), // seccomp_data.nr
            jump(JEQ_K, libc::SYS_io_uring_setup as u32, 0, 1),
            stmt(RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
            stmt(RET_K, SECCOMP_RET_ALLOW),
        ];
        // SAFETY: runs in the forked child before exec; only async-signal-safe prctl calls, on a
        // filter that lives until exec (it is copied by the kernel).
        unsafe {
            cmd.pre_exec(move || {
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &prog as *const _,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        }
    }

    fn export(extra: &[&str], refused: bool) -> std::process::Output {
        let root = sample_root();
        let mut cmd = binary();
        cmd.args(["--data-root", root.to_str().unwrap(), "sample:latest"])
            .args(extra);
        if refused {
            refuse_io_uring(&mut cmd);
        }
        cmd.output().unwrap()
    }

    #[test]
    fn plain_reads_take_over_when_io_uring_is_refused() {
        let normal = export(&["--io", "uring"], false);
        assert!(
            normal.status.success(),
            "{}",
            String::from_utf8_lossy(&normal.stderr)
        );

        let forced = export(&["--io", "uring"], true);
        assert!(
            !forced.status.success(),
            "the filter must really block io_uring"
        );
        let err = String::from_utf8_lossy(&forced.stderr);
        assert!(err.contains("io_uring is not available"), "{err}");
        assert!(forced.stdout.is_empty());

        let auto = export(&[], true);
        assert!(
            auto.status.success(),
            "{}",
            String::from_utf8_lossy(&auto.stderr)
        );
        assert!(
            auto.stdout == normal.stdout,
            "the fallback must write the same bytes"
        );
    }
}
