//! Which URL a registry domain is reached at, and whether plain HTTP may be used.
//!
//! HTTPS first, always. Plain HTTP only where Docker allows it: a loopback registry
//! (127.0.0.0/8, ::1, a name that resolves to loopback only) or with `insecure`; and even then
//! only when the server does not speak TLS. Unlike Docker, loopback does *not* skip certificate
//! verification: a loopback registry that speaks TLS must present a certificate we trust
//! (system roots or its certs.d CA), so that a TLS setup can be tested on one machine. Only
//! `insecure` accepts any certificate (as docker's insecure-registries, crane `--insecure`).

use std::net::ToSocketAddrs;

use anyhow::{bail, Context, Result};

use super::http::{Body, Failure, Response, Transport, TransportErrorKind};
use super::url::{parse_authority, Origin, Scheme, Target};

/// The host that serves a registry domain's API: Docker Hub's is not `docker.io`.
pub fn api_authority(domain: &str) -> &str {
    match domain {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

/// Whether a host is loopback: 127.0.0.0/8, ::1, or a name that resolves to loopback only.
pub fn is_loopback_host(origin: &Origin) -> bool {
    let host = origin.bare_host();
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    match (host, origin.port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// Finds how to talk to `domain`: pings `/v2/` over HTTPS, then, where allowed and only if TLS
/// failed for a reason other than an untrusted certificate, over plain HTTP. Returns the origin
/// and the ping's answer (its `WWW-Authenticate` says how to log in).
pub(crate) fn discover(
    domain: &str,
    transport: &Transport,
    insecure: bool,
) -> Result<(Origin, Response)> {
    let authority = api_authority(domain);
    let https = parse_authority(Scheme::Https, authority)
        .with_context(|| format!("registry {domain:?}"))?;
    let ping = |origin: &Origin| {
        transport.execute("GET", &Target::new(origin, "/v2/"), &[], None, &Body::Empty)
    };
    let tls_failure = match ping(&https) {
        Ok(response) => return Ok((https, response)),
        Err(Failure::Transport(t)) if t.kind == TransportErrorKind::Certificate => {
            bail!(
                "registry {domain}: {}{}",
                t.message,
                if insecure {
                    ""
                } else {
                    " (or pass --insecure to accept any certificate)"
                }
            )
        }
        Err(e) => e,
    };
    // The port stays as given: `host:5000` is tried as http://host:5000, and a bare host as :80.
    let mut http = https.clone();
    http.scheme = Scheme::Http;
    if !authority.contains(':') || authority.ends_with(']') {
        http.port = 80;
    }
    if !(insecure || is_loopback_host(&https)) {
        return Err(Unreachable {
            transient: tls_failure.is_transient(),
            message: format!(
                "registry {domain}: HTTPS failed ({tls_failure}); plain HTTP is used only for \
                 a loopback registry or with --insecure"
            ),
        }
        .into());
    }
    match ping(&http) {
        // Only a registry's answer proves the server speaks plain HTTP: a TLS server answers a
        // plain request too (Go's: 400 "Client sent an HTTP request to an HTTPS server").
        Ok(response) if matches!(response.status, 200 | 401) => Ok((http, response)),
        Ok(response) => bail!(
            "registry {domain}: HTTPS failed ({tls_failure}), and plain HTTP GET /v2/ answered \
             {} rather than as a registry does",
            response.status
        ),
        Err(http_failure) => Err(Unreachable {
            transient: tls_failure.is_transient() && http_failure.is_transient(),
            message: format!(
                "registry {domain} answers neither HTTPS ({tls_failure}) nor plain HTTP \
                 ({http_failure})"
            ),
        }
        .into()),
    }
}

/// The registry could not be reached; `transient` when trying again may help (a reset, a
/// timeout, a refused connection), not when it answered in a way that will not change.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Unreachable {
    pub transient: bool,
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        let o = |h: &str| Origin {
            scheme: Scheme::Http,
            host: h.into(),
            port: 5000,
        };
        assert!(is_loopback_host(&o("127.0.0.1")));
        assert!(is_loopback_host(&o("127.8.9.10")));
        assert!(is_loopback_host(&o("[::1]")));
        assert!(is_loopback_host(&o("localhost")));
        assert!(!is_loopback_host(&o("10.0.0.1")));
        assert!(!is_loopback_host(&o("[::2]")));
    }

    #[test]
    fn docker_hub_is_served_elsewhere() {
        assert_eq!(api_authority("docker.io"), "registry-1.docker.io");
        assert_eq!(api_authority("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
