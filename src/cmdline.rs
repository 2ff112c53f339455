//! What both command lines share: clap value parsers for durations and addresses.
use std::time::Duration;

/// A clap value parser for a non-negative number of seconds (`0.5`, `10`),
/// or a duration with its unit (`500ms`, `5s`, `1m`).
pub fn seconds(s: &str) -> Result<Duration, String> {
    let parsed = match s.parse::<f64>() {
        Ok(v) if v >= 0.0 => Duration::try_from_secs_f64(v).ok(),
        Ok(_) => None,
        Err(_) => humantime::parse_duration(s).ok(),
    };
    parsed.ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

/// A clap value parser for a positive number of seconds (a bound of zero
/// would close every connection at once).
pub fn positive_seconds(s: &str) -> Result<Duration, String> {
    match seconds(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// A clap value parser for `HOST:PORT`: an address (`127.0.0.1:9880`,
/// `[::1]:9880`) or a host name (`localhost:9880`), resolved now; the first
/// address it resolves to is the one used.
pub fn host_port(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "{s:?} is not HOST:PORT (say 127.0.0.1:9880 or localhost:9880)"
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "{s:?} is not HOST:PORT (say 127.0.0.1:9880 or localhost:9880)"
        ));
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("the host name {host:?} resolves to no address")),
        Err(err) => Err(format!("cannot resolve the host name {host:?}: {err}")),
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
        assert_eq!(positive_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(
            positive_seconds("0"),
            Err("\"0\" is not a positive number of seconds".into())
        );
    }

    #[test]
    fn host_port_takes_addresses_and_host_names() {
        assert_eq!(
            host_port("127.0.0.1:9880"),
            Ok("127.0.0.1:9880".parse().unwrap())
        );
        assert_eq!(host_port("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        let local = host_port("localhost:9880").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9880, "{local}");
        for bad in ["localhost", "localhost:http", ":9880", "localhost:99999"] {
            assert_eq!(
                host_port(bad),
                Err(format!(
                    "{bad:?} is not HOST:PORT (say 127.0.0.1:9880 or localhost:9880)"
                ))
            );
        }
        let unknown = host_port("no-such-host.invalid:9880").unwrap_err();
        assert!(
            unknown.starts_with("cannot resolve the host name \"no-such-host.invalid\": "),
            "{unknown}"
        );
    }
}
