//! Every call into libc, as a safe function, each with the reason it is
//! sound. No other file of the project holds an `unsafe` block (tests
//! aside): a reader checks them here, in one place.
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the user called `name`, if there is one.
pub fn user_id(name: &str) -> Option<u32> {
    lookup(name, |name, entry: &mut libc::passwd, buf, result| {
        // SAFETY: every pointer is valid for the call; `buf` outlives `entry`'s use.
        unsafe { libc::getpwnam_r(name, entry, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|entry| entry.pw_uid)
}

/// The gid of the group called `name`, if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    lookup(name, |name, entry: &mut libc::group, buf, result| {
        // SAFETY: as in user_id.
        unsafe { libc::getgrnam_r(name, entry, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|entry| entry.gr_gid)
}

/// Calls a `get*nam_r` function, growing its buffer while it says ERANGE.
/// Only the entry's plain fields may be read afterwards: its pointers point
/// into a buffer that is gone.
fn lookup<T>(
    name: &str,
    call: impl Fn(*const libc::c_char, &mut T, &mut [libc::c_char], *mut *mut T) -> libc::c_int,
) -> Option<T> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: passwd and group are plain C structs; all-zero is a valid value.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(name.as_ptr(), &mut entry, &mut buf, &mut result);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(entry);
    }
}

/// Takes an exclusive `flock` on `file` without waiting; `EWOULDBLOCK`
/// when another open file description holds it.
pub fn lock_exclusive(file: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: flock on a descriptor the caller owns for the call.
    match unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Runs `f` with the process's file-creation mask set to `mask`. The mask
/// is process-wide: only for the instant of creating one file.
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(mask) };
    let result = f();
    // SAFETY: as above, putting the old mask back.
    unsafe { libc::umask(old) };
    result
}

/// `SO_PEERGROUPS` (Linux 4.13+); not exported by `libc` for every target.
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups the peer of a Unix socket had at `connect`.
pub fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 32];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes; the kernel writes at most that.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let wanted = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(wanted);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: `len` now says how much room the list needs (at most NGROUPS_MAX).
        if err.raw_os_error() == Some(libc::ERANGE) && wanted > groups.len() && wanted <= 65_536 {
            groups.resize(wanted, 0);
            continue;
        }
        return Err(err);
    }
}

/// Sends `signal` to `pid` (a child of ours not reaped yet).
pub fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) takes plain integers; a pid that is gone is ESRCH, ignored.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Makes `cmd`'s process get `signal` when this one dies (even by SIGKILL),
/// and exit at once if this one is already gone when it starts.
pub fn die_with_this_process(cmd: &mut tokio::process::Command, signal: libc::c_int) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// This process's parent's pid.
pub fn parent_pid() -> u32 {
    // SAFETY: getppid takes nothing and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Asks the kernel to send this process `signal` when its parent exits
/// (`PR_SET_PDEATHSIG`).
pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    match unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit now in force, if it can be read.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Hands the free pages of glibc's heaps back to the OS.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it touches nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Atomically swaps the files at `from` and `to` (renameat2 RENAME_EXCHANGE).
pub fn rename_exchange(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (from, to): (CString, CString) = (c(from)?, c(to)?);
    let (from, to): (&CStr, &CStr) = (&from, &to);
    // SAFETY: renameat2 with two NUL-terminated paths relative to the cwd.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}
