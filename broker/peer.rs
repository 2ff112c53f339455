//! Who is on the other end of a connection: read from the kernel once, when
//! the connection is accepted, and handed to every request on it.
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use tokio::net::UnixStream;

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
        let groups = match argsbroker::sys::peer_groups(stream.as_raw_fd()) {
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
