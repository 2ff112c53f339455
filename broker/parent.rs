//! `--exit-with-parent`: a broker owned by another program (Python's
//! `argsbroker.serve()`) must not outlive it, even when that program is
//! killed with SIGKILL and can clean nothing up.
use argsbroker::sys;

/// Asks the kernel to send this process SIGTERM when its parent exits
/// (`PR_SET_PDEATHSIG`; SIGTERM, so the broker stops cleanly and removes its
/// socket), then checks that the parent has not died already: a parent that
/// died before the request took effect sends nothing. `expected` is the
/// parent's pid as the caller knows it (0: whichever parent this process has
/// now; pass the pid to also cover a parent that died before the broker ran).
pub fn exit_with_parent(expected: u32) -> anyhow::Result<()> {
    let before = sys::parent_pid();
    sys::set_parent_death_signal(libc::SIGTERM).map_err(|err| {
        anyhow::anyhow!("--exit-with-parent: prctl(PR_SET_PDEATHSIG) failed: {err}")
    })?;
    let expected = match expected {
        0 => before,
        pid => pid,
    };
    if sys::parent_pid() != expected {
        anyhow::bail!(
            "--exit-with-parent: the parent process {expected} has already exited; not starting"
        );
    }
    Ok(())
}
