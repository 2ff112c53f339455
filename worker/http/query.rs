//! Read-your-writes: `?min_revision=N[&wait=D]` on `/args` and `/args/...`.
//!
//! A client that has just written revision N (the broker's reply says which)
//! asks a worker for at least that revision. The answer comes at once when
//! the worker serves N or newer; otherwise the request waits up to `wait`
//! for the follower to bring it (on the follower's watch channel, never by
//! polling), then is a 409 saying which revision the worker serves.
//!
//! Only requests that carry a query string come here: a plain `GET /args`
//! stays a pointer load and a reference-count increment.
use super::{HttpError, Prepared};
use argsbroker::client::Live;
use std::time::Duration;

/// How long a request waits when it names no `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// The longest a request waits; a longer `wait` is cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// What a query asks for: the lowest revision to answer with, and how long
/// to wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRevision {
    pub min_revision: u64,
    pub wait: Duration,
}

/// The read-your-writes parameters of a query string: `None` when it has no
/// `min_revision`. Other parameters are ignored, as they always were; a
/// `wait` is checked even without `min_revision`, where it does nothing.
pub fn parse(query: &str) -> Result<Option<MinRevision>, HttpError> {
    let mut min_revision = None;
    let mut wait = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (parameter, slot) = match decode(name).as_deref() {
            Some("min_revision") => ("min_revision", &mut min_revision),
            Some("wait") => ("wait", &mut wait),
            _ => continue,
        };
        if slot.is_some() {
            return Err(HttpError::RepeatedParameter { parameter });
        }
        let value = decode(value).ok_or(HttpError::BadParameter {
            parameter,
            value: None,
        })?;
        *slot = Some(value);
    }
    let wait = match wait {
        Some(value) => parse_wait(&value)?,
        None => DEFAULT_WAIT,
    };
    let Some(value) = min_revision else {
        return Ok(None);
    };
    // Digits only: `+5`, ` 5` and `5.0` are not revisions.
    let min_revision = value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<u64>().ok())
        .flatten()
        .ok_or(HttpError::BadParameter {
            parameter: "min_revision",
            value: Some(value),
        })?;
    Ok(Some(MinRevision { min_revision, wait }))
}

/// Percent-decodes one name or value; `None` if it is not UTF-8.
fn decode(raw: &str) -> Option<String> {
    let raw = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// `wait`: a number of seconds (`2.5`, `0`), or a number with a unit
/// (`500ms`, `2s`, `1m`); at most [`MAX_WAIT`], longer is cut to it.
fn parse_wait(value: &str) -> Result<Duration, HttpError> {
    let bad = || HttpError::BadParameter {
        parameter: "wait",
        value: Some(value.to_owned()),
    };
    let number = value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let wait = if number {
        let seconds: f64 = value.parse().map_err(|_| bad())?;
        Duration::try_from_secs_f64(seconds).unwrap_or(MAX_WAIT)
    } else if value.starts_with(|c: char| c.is_ascii_digit()) {
        humantime::parse_duration(value).map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    Ok(wait.min(MAX_WAIT))
}

/// Answers at once when `live` serves `min_revision` or newer; otherwise
/// waits up to `wait` for it, then refuses with 409.
pub async fn reach(live: &Live<Prepared>, asked: MinRevision) -> Result<(), HttpError> {
    let revision = live.revision();
    if revision >= asked.min_revision {
        return Ok(());
    }
    tracing::debug!(
        "waiting up to {} for revision {} (serving revision {revision})",
        humantime::format_duration(asked.wait),
        asked.min_revision
    );
    match tokio::time::timeout(asked.wait, live.revision_at_least(asked.min_revision)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(HttpError::NotReached {
            revision: live.revision(),
            min_revision: asked.min_revision,
            waited: asked.wait,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(query: &str) -> Option<MinRevision> {
        parse(query).unwrap_or_else(|err| panic!("{query}: {err}"))
    }

    fn asked(min_revision: u64, wait_ms: u64) -> Option<MinRevision> {
        Some(MinRevision {
            min_revision,
            wait: Duration::from_millis(wait_ms),
        })
    }

    fn refused(query: &str) -> String {
        match parse(query) {
            Ok(got) => panic!("{query}: accepted as {got:?}"),
            Err(err) => err.to_string(),
        }
    }

    /// Revisions are digits; `wait` is seconds or a duration with a unit,
    /// cut to 30 s; unknown parameters are ignored.
    #[test]
    fn good_queries() {
        assert_eq!(ok("min_revision=5"), asked(5, 1000));
        assert_eq!(ok("min_revision=0"), asked(0, 1000));
        assert_eq!(ok("min_revision=5&wait=2.5"), asked(5, 2500));
        assert_eq!(ok("wait=0&min_revision=5"), asked(5, 0));
        assert_eq!(ok("min_revision=5&wait=500ms"), asked(5, 500));
        assert_eq!(ok("min_revision=5&wait=2s"), asked(5, 2000));
        assert_eq!(ok("min_revision=5&wait=1m"), asked(5, 30_000));
        assert_eq!(ok("min_revision=5&wait=100000"), asked(5, 30_000));
        assert_eq!(ok("min%5Frevision=%35"), asked(5, 1000));
        assert_eq!(
            ok("min_revision=18446744073709551615"),
            asked(u64::MAX, 1000)
        );
        assert_eq!(ok("min_revision=5&x=1&y&=&&"), asked(5, 1000));
        assert_eq!(ok("x=1&y"), None);
        assert_eq!(ok(""), None);
        assert_eq!(ok("wait=3"), None);
    }

    /// A bad value names its parameter and quotes the value.
    #[test]
    fn bad_queries() {
        for (query, error) in [
            (
                "min_revision=abc",
                r#"min_revision must be a revision number (0 or more), not "abc""#,
            ),
            (
                "min_revision=",
                r#"min_revision must be a revision number (0 or more), not """#,
            ),
            (
                "min_revision",
                r#"min_revision must be a revision number (0 or more), not """#,
            ),
            (
                "min_revision=-1",
                r#"min_revision must be a revision number (0 or more), not "-1""#,
            ),
            (
                "min_revision=%2B1",
                r#"min_revision must be a revision number (0 or more), not "+1""#,
            ),
            (
                "min_revision=+1",
                r#"min_revision must be a revision number (0 or more), not " 1""#,
            ),
            (
                "min_revision=1.0",
                r#"min_revision must be a revision number (0 or more), not "1.0""#,
            ),
            (
                "min_revision=18446744073709551616",
                r#"min_revision must be a revision number (0 or more), not "18446744073709551616""#,
            ),
            (
                "min_revision=1&wait=-1",
                r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not "-1""#,
            ),
            (
                "min_revision=1&wait=abc",
                r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not "abc""#,
            ),
            (
                "min_revision=1&wait=1.2.3",
                r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not "1.2.3""#,
            ),
            (
                "min_revision=1&wait=",
                r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not """#,
            ),
            (
                "min_revision=1&wait=inf",
                r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not "inf""#,
            ),
            (
                "min_revision=1&wait=2parsecs",
                r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not "2parsecs""#,
            ),
            (
                "min_revision=1&wait=1e3",
                r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not "1e3""#,
            ),
            ("wait=-1", r#"wait must be a number of seconds (2.5) or a duration with a unit (500ms, 2s), not "-1""#),
            (
                "min_revision=%FF",
                "min_revision must be a revision number (0 or more); its percent-encoding does not decode to UTF-8",
            ),
            ("min_revision=1&min_revision=2", "min_revision is given more than once"),
            ("wait=1&min_revision=1&wait=2", "wait is given more than once"),
        ] {
            assert_eq!(refused(query), error, "{query}");
        }
    }
}
