//! The few URL operations a registry client needs: an origin (who may see our credentials),
//! and resolving a `Location` header against the request it answered.
//!
//! `Location` may be absolute (`https://other.host/upload?sig=…`), absolute-path
//! (`/v2/repo/blobs/uploads/<id>?_state=…`) or, rarely, relative to the request's path; its
//! query must be kept as is, since registries carry upload state in it (RFC 9110 §10.2.2,
//! RFC 3986 §5.2).

use std::fmt;

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Scheme, host and port: the unit of trust. Credentials and tokens go only to the origin they
/// were given for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: Scheme,
    /// Lowercase; an IPv6 address keeps its brackets (`[::1]`).
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// `host[:port]` as Docker names a registry (and its certs.d directory): the port only when
    /// it is not the scheme's default.
    pub fn authority(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host without IPv6 brackets, for name resolution and TLS server names.
    pub fn bare_host(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// An absolute URL split into origin and path-with-query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub origin: Origin,
    /// Starts with `/`; may carry `?query` (never a `#fragment`).
    pub path_and_query: String,
}

impl Target {
    pub fn new(origin: &Origin, path_and_query: impl Into<String>) -> Self {
        Target {
            origin: origin.clone(),
            path_and_query: path_and_query.into(),
        }
    }

    /// Parses `scheme://authority/path?query` (userinfo is refused: we never take credentials
    /// from a URL).
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = match url.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            _ => bail!("not an http(s) URL: {url:?}"),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, mut path) = rest.split_at(end);
        if let Some(i) = path.find('#') {
            path = &path[..i];
        }
        let origin =
            parse_authority(scheme, authority).with_context(|| format!("in URL {url:?}"))?;
        let path_and_query = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Ok(Target {
            origin,
            path_and_query,
        })
    }

    /// Resolves a `Location` header value against this (the request's) URL.
    pub fn resolve(&self, location: &str) -> Result<Target> {
        let location = location.trim();
        if location.is_empty() {
            bail!("empty Location header");
        }
        let location = location.split('#').next().unwrap_or_default();
        if location.contains("://") && !location.starts_with('/') && !location.starts_with('?') {
            return Target::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return Target::parse(&format!("{}://{rest}", self.origin.scheme.as_str()));
        }
        let path_and_query = if location.starts_with('/') {
            location.to_string()
        } else if location.starts_with('?') {
            format!("{}{location}", self.path())
        } else {
            // Relative to the request path's directory (RFC 3986 §5.2.3), dot segments removed.
            let base = self.path();
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            remove_dot_segments(&format!("{dir}{location}"))
        };
        Ok(Target::new(&self.origin, path_and_query))
    }

    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(&self.path_and_query, |(p, _)| p)
    }

    /// The same URL with `name=value` appended to its query (keeping what is there).
    pub fn with_query(&self, name: &str, value: &str) -> Target {
        let sep = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        Target::new(
            &self.origin,
            format!(
                "{}{sep}{}={}",
                self.path_and_query,
                encode_component(name),
                encode_component(value)
            ),
        )
    }

    pub fn url(&self) -> String {
        format!("{}{}", self.origin, self.path_and_query)
    }
}

impl fmt::Display for Target {
    /// Without the query: upload URLs carry state (and, on some registries, signatures) in it,
    /// which does not belong in messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.path())
    }
}

/// Parses `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn parse_authority(scheme: Scheme, authority: &str) -> Result<Origin> {
    if authority.is_empty() || authority.contains('@') {
        bail!("invalid host {authority:?}");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .with_context(|| format!("invalid host {authority:?}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .with_context(|| format!("invalid host {authority:?}"))?,
            ),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    let port = match port {
        None => scheme.default_port(),
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("invalid port in {authority:?}"))?,
    };
    if host.is_empty() || host == "[]" {
        bail!("invalid host {authority:?}");
    }
    Ok(Origin { scheme, host, port })
}

fn remove_dot_segments(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut joined = out.join("/");
    if !joined.starts_with('/') {
        joined.insert(0, '/');
    }
    match query {
        Some(q) => format!("{joined}?{q}"),
        None => joined,
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for query values such as
/// `sha256:…` digests and `repository:a/b:pull,push` scopes).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Target {
        Target::parse("http://127.0.0.1:5000/v2/team/app/blobs/uploads/").unwrap()
    }

    #[test]
    fn parses_hosts_ports_and_ipv6() {
        let t = Target::parse("https://Registry.Example.com/v2/").unwrap();
        assert_eq!(t.origin.host, "registry.example.com");
        assert_eq!(t.origin.port, 443);
        assert_eq!(t.origin.authority(), "registry.example.com");
        let t = Target::parse("http://[::1]:5000/v2/x?a=b#frag").unwrap();
        assert_eq!(t.origin.host, "[::1]");
        assert_eq!(t.origin.bare_host(), "::1");
        assert_eq!(t.origin.authority(), "[::1]:5000");
        assert_eq!(t.path_and_query, "/v2/x?a=b");
        assert!(Target::parse("https://user:pw@host/").is_err());
        assert!(Target::parse("ftp://host/").is_err());
        assert!(Target::parse("https://host:0/").is_err());
    }

    #[test]
    fn resolves_locations_keeping_their_query() {
        let b = base();
        let abs_path = b
            .resolve("/v2/team/app/blobs/uploads/u1?_state=xyz")
            .unwrap();
        assert_eq!(
            abs_path.url(),
            "http://127.0.0.1:5000/v2/team/app/blobs/uploads/u1?_state=xyz"
        );
        let other = b
            .resolve("https://storage.example/up/u1?sig=a%2Fb&x=1")
            .unwrap();
        assert_eq!(other.origin.host, "storage.example");
        assert_eq!(other.path_and_query, "/up/u1?sig=a%2Fb&x=1");
        let rel = b.resolve("u2?_state=1").unwrap();
        assert_eq!(rel.path_and_query, "/v2/team/app/blobs/uploads/u2?_state=1");
        let dots = b.resolve("../x/./y").unwrap();
        assert_eq!(dots.path_and_query, "/v2/team/app/blobs/x/y");
        let scheme_relative = b.resolve("//mirror:8080/z").unwrap();
        assert_eq!(scheme_relative.url(), "http://mirror:8080/z");
        assert!(b.resolve("").is_err());
    }

    #[test]
    fn query_parameters_are_appended_and_encoded() {
        let t = base().resolve("/v2/a/blobs/uploads/u?_state=s").unwrap();
        let d = "sha256:abc";
        assert_eq!(
            t.with_query("digest", d).path_and_query,
            "/v2/a/blobs/uploads/u?_state=s&digest=sha256%3Aabc"
        );
        assert_eq!(
            base()
                .with_query("scope", "repository:a/b:pull,push")
                .path_and_query,
            "/v2/team/app/blobs/uploads/?scope=repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn display_leaves_the_query_out() {
        let t = base()
            .resolve("/v2/a/blobs/uploads/u?_state=secretish")
            .unwrap();
        assert_eq!(t.to_string(), "http://127.0.0.1:5000/v2/a/blobs/uploads/u");
    }
}
