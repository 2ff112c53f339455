//! systemd's readiness protocol: a datagram such as `READY=1` sent to the
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Without the variable it does nothing, like `sd_notify(3)`.
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The variable naming the notify socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`, if it is set.
pub fn notify(state: &str) -> io::Result<()> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(());
    };
    let bytes = target.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&target)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// Tells the service manager this process is ready, logging (not failing)
/// if the message cannot be sent.
pub fn ready() {
    let state = format!("READY=1\nMAINPID={}", std::process::id());
    if let Err(err) = notify(&state) {
        tracing::warn!(%err, "could not notify the service manager ($NOTIFY_SOCKET)");
    }
}
