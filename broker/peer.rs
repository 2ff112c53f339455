//! Who is on the other end of a connection: read from the kernel once, when
//! the connection is accepted, and handed to every request on it.
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use tokio::net::UnixStream;

/// `SO_PEERGROUPS` (Linux 4.13+); not exported by `libc` for every target.
const SO_PEERGROUPS: libc::c_int = 59;

/// The credentials the peer had when it called `connect` (`SO_PEERCRED`),
/// and its supplementary groups at that moment (`SO_PEERGROUPS`). Both are
/// captured by the kernel at connect time, so a peer that changes its
/// credentials afterwards, or passes the socket on, keeps these.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Arc<[u32]>,
}

impl Peer {
    pub fn of(stream: &UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        let groups = match peer_groups(stream.as_raw_fd()) {
            Ok(groups) => groups,
            Err(err) => {
                // Older kernels: only the primary group is known.
                tracing::debug!(%err, "SO_PEERGROUPS unavailable; using the primary group only");
                Vec::new()
            }
        };
        Ok(Self {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
            groups: groups.into(),
        })
    }

    /// Whether the peer's primary or a supplementary group is `gid`.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
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
