//! What both command lines share: duration flags and the shutdown signal.
use std::future::Future;
use std::time::Duration;

/// A clap value parser for a non-negative number of seconds (`0.5`, `10`).
pub fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!(
                "cannot install handlers for SIGINT and SIGTERM; stop this process with SIGKILL"
            );
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_non_negative_numbers() {
        assert_eq!(seconds("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(
            seconds("-1"),
            Err("\"-1\" is not a number of seconds".into())
        );
        assert_eq!(
            seconds("soon"),
            Err("\"soon\" is not a number of seconds".into())
        );
        assert!(seconds("inf").is_err());
    }
}
