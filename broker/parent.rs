//! `--exit-with-parent`: a broker owned by another program (Python's
//! `argsbroker.serve()`) must not outlive it, even when that program is
//! killed with SIGKILL and can clean nothing up.

/// Asks the kernel to send this process SIGTERM when its parent exits
/// (`PR_SET_PDEATHSIG`; SIGTERM, so the broker stops cleanly and removes its
/// socket), then checks that the parent has not died already: a parent that
/// died before the request took effect sends nothing. `expected` is the
/// parent's pid as the caller knows it (0: whichever parent this process has
/// now; pass the pid to also cover a parent that died before the broker ran).
pub fn exit_with_parent(expected: u32) -> anyhow::Result<()> {
    // SAFETY: plain system calls with no pointers.
    let (set, parent) = unsafe {
        let before = libc::getppid();
        let set = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
        (set, (before, libc::getppid()))
    };
    if set != 0 {
        anyhow::bail!(
            "--exit-with-parent: prctl(PR_SET_PDEATHSIG) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    let expected = match expected {
        0 => parent.0,
        pid => pid as libc::pid_t,
    };
    if parent.1 != expected {
        anyhow::bail!(
            "--exit-with-parent: the parent process {expected} has already exited; not starting"
        );
    }
    Ok(())
}
