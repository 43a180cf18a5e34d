//! Authorization: what the registry asks for (`WWW-Authenticate`), and the header that answers
//! it, per scope set.
//!
//! - No challenge: anonymous.
//! - `Basic`: the user's password on every request.
//! - `Bearer realm=…,service=…` (distribution `docs/spec/auth/token.md`, `oauth.md`): a token
//!   from the realm for the scopes a request needs, `repository:<repo>:pull,push` for a push
//!   (plus `repository:<from>:pull` for a cross-repository mount). With a password we GET the
//!   realm with Basic auth; with an identity token we POST `grant_type=refresh_token`. Tokens
//!   are cached per scope set until shortly before `expires_in` (default 60 s) runs out; a 401 on
//!   a later request (a token the registry thinks expired) fetches a new one once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::credentials::Credentials;
use super::endpoint::is_loopback_host;
use super::http::{Body, Failure, Response, Transport};
use super::secret::Secret;
use super::url::{encode_component, Scheme, Target};

/// The scopes a request's token must carry, sorted (the token cache's key).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Scopes(BTreeSet<String>);

impl Scopes {
    /// Push (and pull) on `repository`.
    pub fn push(repository: &str) -> Self {
        let mut s = Scopes::default();
        s.0.insert(format!("repository:{repository}:pull,push"));
        s
    }

    /// The same, plus pull on `from` (the source of a mount).
    pub fn with_pull(&self, from: &str) -> Self {
        let mut s = self.clone();
        s.0.insert(format!("repository:{from}:pull"));
        s
    }

    fn with(&self, extra: &str) -> Self {
        let mut s = self.clone();
        s.0.extend(
            extra
                .split(' ')
                .filter(|x| !x.is_empty())
                .map(str::to_string),
        );
        s
    }

    fn key(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(" ")
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// The scope the registry named (added to ours for the request it refused).
        scope: Option<String>,
    },
}

/// Picks the challenge we answer from a response's `WWW-Authenticate` headers: Bearer over
/// Basic; unknown schemes are ignored.
pub(crate) fn parse_challenge<'a>(values: impl Iterator<Item = &'a str>) -> Challenge {
    let mut basic = false;
    for value in values {
        let value = value.trim();
        let (scheme, params) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let params = parse_params(params);
            let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if let Some(realm) = get("realm") {
                return Challenge::Bearer {
                    realm,
                    service: get("service"),
                    scope: get("scope"),
                };
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        }
    }
    if basic {
        Challenge::Basic
    } else {
        Challenge::None
    }
}

/// `k1="v 1",k2=v2` (RFC 9110 §11.2 auth-params; quoted strings may hold commas and `\"`).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    out
}

struct Token {
    value: Secret,
    renew_at: Instant,
}

/// One registry's authorization state, shared by every thread pushing to it.
pub(crate) struct Auth {
    credentials: Option<Credentials>,
    challenge: RwLock<Challenge>,
    tokens: Mutex<HashMap<String, Token>>,
    /// Held while a token is fetched: the parallel uploads that start a push all need the
    /// same token at once, and one request to the token server serves them all.
    fetching: Mutex<()>,
    insecure: bool,
}

impl Auth {
    pub fn new(credentials: Option<Credentials>, challenge: Challenge, insecure: bool) -> Self {
        let challenge = match challenge {
            Challenge::Bearer { realm, service, .. } => Challenge::Bearer {
                realm,
                service,
                scope: None,
            },
            other => other,
        };
        Auth {
            credentials,
            challenge: RwLock::new(challenge),
            tokens: Mutex::new(HashMap::new()),
            fetching: Mutex::new(()),
            insecure,
        }
    }

    pub fn challenge(&self) -> Challenge {
        self.challenge
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `Authorization` value for a request to the registry needing `scopes`, fetching a
    /// token if there is none (or it is about to expire).
    pub fn authorization(
        &self,
        transport: &Transport,
        scopes: &Scopes,
    ) -> Result<Option<Secret>, Failure> {
        match self.challenge() {
            Challenge::None => Ok(None),
            Challenge::Basic => Ok(match &self.credentials {
                Some(Credentials::Password { username, password }) => {
                    Some(basic_header(username, password))
                }
                _ => None,
            }),
            Challenge::Bearer { realm, service, .. } => {
                let key = scopes.key();
                if let Some(token) = self.cached_token(&key) {
                    return Ok(Some(token));
                }
                let _one_fetch = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
                // Another thread may have fetched it while this one waited.
                if let Some(token) = self.cached_token(&key) {
                    return Ok(Some(token));
                }
                let (token, lifetime) =
                    self.fetch_token(transport, &realm, service.as_deref(), scopes)?;
                let header = Secret::new(format!("Bearer {}", token.expose()));
                // Renew when 90% of the lifetime is gone, so a token never lapses in flight.
                let renew_at = Instant::now() + lifetime.mul_f64(0.9);
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        key,
                        Token {
                            value: header.clone(),
                            renew_at,
                        },
                    );
                Ok(Some(header))
            }
        }
    }

    /// The cached token for a scope set, unless it is due for renewal.
    fn cached_token(&self, key: &str) -> Option<Secret> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(key)
            .filter(|t| Instant::now() < t.renew_at)
            .map(|t| t.value.clone())
    }

    /// Takes in a 401 from the registry to a request that carried `sent` (its Authorization,
    /// if any). Returns the scopes to send the request again with, if that may help: a new or
    /// changed challenge, or a token the registry no longer accepts (expired mid-push). A
    /// scope the challenge names is added for this request only (the shared challenge keeps
    /// none, so that one repository's scope does not leak into the tokens for others).
    ///
    /// A refused token is dropped only while it is still the cached one: parallel uploads
    /// send the same token, and when it expires they are all refused at once; the first to
    /// hear it fetches a new token, and the others must retry with that one rather than give
    /// up because there was nothing left to drop. The caller sends a request again at most
    /// once, so a token the registry will never accept costs one more fetch, not a loop.
    pub fn unauthorized(
        &self,
        response: &Response,
        scopes: &Scopes,
        sent: Option<&Secret>,
    ) -> Option<Scopes> {
        let offered = parse_challenge(response.header_all("www-authenticate"));
        let (shared, extra) = match offered {
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => (
                Challenge::Bearer {
                    realm,
                    service,
                    scope: None,
                },
                scope,
            ),
            other => (other, None),
        };
        let mut current = self.challenge.write().unwrap_or_else(|e| e.into_inner());
        let changed = shared != *current && shared != Challenge::None;
        if changed {
            *current = shared.clone();
        }
        drop(current);
        let retry_scopes = match &extra {
            Some(extra) => scopes.with(extra),
            None => scopes.clone(),
        };
        let retry = match shared {
            Challenge::Bearer { .. } => {
                let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
                let key = scopes.key();
                let refused_is_cached = matches!(
                    (tokens.get(&key), sent),
                    (Some(cached), Some(sent)) if cached.value.expose() == sent.expose()
                );
                if refused_is_cached {
                    tokens.remove(&key);
                }
                true
            }
            Challenge::Basic => {
                changed && matches!(self.credentials, Some(Credentials::Password { .. }))
            }
            Challenge::None => false,
        };
        retry.then_some(retry_scopes)
    }

    fn fetch_token(
        &self,
        transport: &Transport,
        realm: &str,
        service: Option<&str>,
        scopes: &Scopes,
    ) -> Result<(Secret, Duration), Failure> {
        let realm_target = Target::parse(realm)
            .map_err(|e| Failure::other(format!("the registry's token realm {realm:?}: {e:#}")))?;
        if self.credentials.is_some()
            && realm_target.origin.scheme == Scheme::Http
            && !self.insecure
            && !is_loopback_host(&realm_target.origin)
        {
            return Err(Failure::other(format!(
                "the registry's token server {realm_target} is plain HTTP: refusing to send \
                 credentials there without --insecure"
            )));
        }
        let response = match &self.credentials {
            Some(Credentials::IdentityToken { token, .. }) => {
                // OAuth2 refresh-token grant (distribution `docs/spec/auth/oauth.md`).
                let mut form = format!(
                    "grant_type=refresh_token&client_id=oci-export&refresh_token={}",
                    encode_component(token.expose())
                );
                if let Some(service) = service {
                    form.push_str(&format!("&service={}", encode_component(service)));
                }
                form.push_str(&format!("&scope={}", encode_component(&scopes.key())));
                let form = Secret::new(form);
                transport.execute(
                    "POST",
                    &realm_target,
                    &[(
                        "content-type",
                        "application/x-www-form-urlencoded".to_string(),
                    )],
                    None,
                    &Body::Bytes(form.expose().as_bytes()),
                )?
            }
            credentials => {
                let mut target = realm_target.clone();
                if let Some(service) = service {
                    target = target.with_query("service", service);
                }
                for scope in &scopes.0 {
                    target = target.with_query("scope", scope);
                }
                let authorization = match credentials {
                    Some(Credentials::Password { username, password }) => {
                        target = target.with_query("account", username);
                        Some(basic_header(username, password))
                    }
                    _ => None,
                };
                transport.execute("GET", &target, &[], authorization.as_ref(), &Body::Empty)?
            }
        };
        if !response.is_success() {
            let status = response.status;
            let answer = response.into_failure();
            let who = match &self.credentials {
                None => "anonymously".to_string(),
                Some(c) => format!("as {:?}", c.username()),
            };
            return Err(Failure::other(format!(
                "the registry's token server refused a token {who} for {} ({}){}",
                scopes.key(),
                answer,
                if status == 401 {
                    ": check the credentials docker uses for this registry"
                } else {
                    ""
                }
            )));
        }
        parse_token_response(&response.body)
            .map_err(|e| Failure::other(format!("the token server {realm_target} answered {e}")))
    }
}

fn basic_header(username: &str, password: &Secret) -> Secret {
    let joined = Secret::new(format!("{username}:{}", password.expose()));
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(joined.expose())
    ))
}

/// `{"token"|"access_token": …, "expires_in": seconds}`; the default lifetime is 60 s, and
/// shorter ones are taken as 60 s too, as docker does (distribution `token.md`: "at least 60").
fn parse_token_response(body: &[u8]) -> Result<(Secret, Duration), String> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let answer: TokenAnswer = serde_json::from_slice(body)
        .map_err(|_| "something other than a token (not JSON)".to_string())?;
    let token = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or("JSON without a token")?;
    let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(60));
    Ok((Secret::new(token), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::registry::url::Target;

    #[test]
    fn bearer_challenges_with_quoted_commas() {
        let c = parse_challenge(
            [
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
            ]
            .into_iter(),
        );
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        assert_eq!(
            parse_challenge([r#"Basic realm="Registry""#].into_iter()),
            Challenge::Basic
        );
        // Bearer wins over Basic, whatever the order.
        let both =
            parse_challenge([r#"Basic realm="x""#, r#"bearer realm=https://t/x"#].into_iter());
        assert!(matches!(both, Challenge::Bearer { .. }), "{both:?}");
        assert_eq!(
            parse_challenge([r#"Negotiate abc"#].into_iter()),
            Challenge::None
        );
        assert_eq!(
            parse_params(r#"a="x\"y", b=2"#),
            vec![("a".into(), "x\"y".into()), ("b".into(), "2".into())]
        );
    }

    fn unauthorized_answer(challenge: &str) -> Response {
        let mut headers = ureq::http::HeaderMap::new();
        headers.insert("www-authenticate", challenge.parse().unwrap());
        Response {
            status: 401,
            headers,
            body: Vec::new(),
            target: Target::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/").unwrap(),
            method: "POST",
            refused_login: None,
        }
    }

    #[test]
    fn a_challenge_scope_serves_the_refused_request_only() {
        let realm = "http://127.0.0.1:5001/token";
        let auth = Auth::new(
            None,
            parse_challenge(
                [format!(r#"Bearer realm="{realm}",scope="repository:x:pull""#).as_str()]
                    .into_iter(),
            ),
            false,
        );
        let bearer = Challenge::Bearer {
            realm: realm.into(),
            service: None,
            scope: None,
        };
        assert_eq!(auth.challenge(), bearer);
        let refused = unauthorized_answer(&format!(
            r#"Bearer realm="{realm}",scope="repository:other:pull",error="insufficient_scope""#
        ));
        let retry = auth
            .unauthorized(&refused, &Scopes::push("a"), Some(&Secret::new("Bearer t")))
            .unwrap();
        assert_eq!(retry.key(), "repository:a:pull,push repository:other:pull");
        assert_eq!(
            auth.challenge(),
            bearer,
            "the shared challenge keeps no scope"
        );
        // A Basic challenge with no password to offer: no retry.
        let basic = unauthorized_answer(r#"Basic realm="r""#);
        assert!(auth
            .unauthorized(&basic, &Scopes::push("a"), None)
            .is_none());
    }

    #[test]
    fn a_refused_token_is_dropped_only_while_it_is_the_cached_one() {
        let realm = "http://127.0.0.1:5001/token";
        let auth = Auth::new(
            None,
            parse_challenge([format!(r#"Bearer realm="{realm}""#).as_str()].into_iter()),
            false,
        );
        let scopes = Scopes::push("a");
        let cache = |value: &str| {
            auth.tokens.lock().unwrap().insert(
                scopes.key(),
                Token {
                    value: Secret::new(value),
                    renew_at: Instant::now() + Duration::from_secs(60),
                },
            );
        };
        let refused = unauthorized_answer(&format!(r#"Bearer realm="{realm}""#));
        // Two uploads sent the same token; the first to be refused drops it and retries.
        cache("Bearer old");
        let old = Secret::new("Bearer old");
        assert_eq!(
            auth.unauthorized(&refused, &scopes, Some(&old)),
            Some(scopes.clone())
        );
        assert!(auth.cached_token(&scopes.key()).is_none());
        // The second, refused before a new token is cached, retries too (and fetches it).
        assert_eq!(
            auth.unauthorized(&refused, &scopes, Some(&old)),
            Some(scopes.clone())
        );
        // A third, refused after the new token is cached, keeps that one and retries with it.
        cache("Bearer new");
        assert_eq!(
            auth.unauthorized(&refused, &scopes, Some(&old)),
            Some(scopes.clone())
        );
        assert_eq!(
            auth.cached_token(&scopes.key()).unwrap().expose(),
            "Bearer new"
        );
    }

    #[test]
    fn token_answers() {
        let (t, life) = parse_token_response(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!((t.expose(), life), ("abc", Duration::from_secs(300)));
        let (t, life) = parse_token_response(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!((t.expose(), life), ("xyz", Duration::from_secs(60)));
        assert!(parse_token_response(br#"{"token":""}"#).is_err());
        assert!(parse_token_response(b"<html>").is_err());
    }

    #[test]
    fn scopes_are_a_sorted_set() {
        let push = Scopes::push("team/app");
        assert_eq!(push.key(), "repository:team/app:pull,push");
        let mount = push.with_pull("team/base");
        assert_eq!(
            mount.key(),
            "repository:team/app:pull,push repository:team/base:pull"
        );
        assert_eq!(mount.with("repository:team/app:pull,push"), mount);
    }

    #[test]
    fn basic_header_is_base64_of_user_colon_password() {
        let h = basic_header("alice", &Secret::new("s3cret"));
        assert_eq!(h.expose(), "Basic YWxpY2U6czNjcmV0");
        assert_eq!(format!("{h:?}"), "<redacted>");
    }
}
