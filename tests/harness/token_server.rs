//! The tests' own token server for the registry's `token` auth controller (distribution
//! `docs/spec/auth/token.md`, `jwt.md`): it checks Basic credentials (GET) or a refresh token
//! (POST, `grant_type=refresh_token`), and answers a JWT signed ES256 with a key whose
//! certificate travels in the `x5c` header and sits in the registry's `rootcertbundle`.
//!
//! Tokens can be made to die early: distribution accepts a token until 60 s (its leeway) after
//! its `exp`, so a token meant to live `lifetime` gets `exp = now + lifetime - 60`, while the
//! answer's `expires_in` still says 300 s, so a client only learns of the expiry by a 401.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use super::http1::{parse_query, read_body, read_head, respond};

pub const SERVICE: &str = "oe-test-registry";
pub const ISSUER: &str = "oe-test-token-issuer";

/// One token request as the server saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// The Basic user, if any.
    pub user: Option<String>,
    /// Whether it was a refresh-token grant.
    pub refresh: bool,
    pub scopes: Vec<String>,
    pub granted: bool,
}

struct Shared {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    refresh_token: String,
    lifetime: Mutex<Duration>,
    requests: Mutex<Vec<TokenRequest>>,
    stop: AtomicBool,
}

pub struct TokenServer {
    shared: Arc<Shared>,
    addr: String,
}

impl TokenServer {
    /// `key_pem`/`cert_pem`: the signing key (PKCS#8) and its certificate.
    pub fn start(
        key_pem: &Path,
        cert_pem: &Path,
        user: &str,
        password: &str,
        refresh_token: &str,
    ) -> TokenServer {
        let key_der = pem_body(&std::fs::read_to_string(key_pem).unwrap());
        let cert_der = pem_body(&std::fs::read_to_string(cert_pem).unwrap());
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_der,
            &SystemRandom::new(),
        )
        .expect("an EC P-256 PKCS#8 key");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            key,
            cert_der,
            user: user.into(),
            password: password.into(),
            refresh_token: refresh_token.into(),
            lifetime: Mutex::new(Duration::from_secs(300)),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = serve(&s, stream);
                    });
                }
            }
        });
        TokenServer { shared, addr }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// How long tokens issued from now on are accepted by the registry.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.shared.lifetime.lock().unwrap() = lifetime;
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn pem_body(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM base64")
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn serve(s: &Shared, stream: TcpStream) -> std::io::Result<()> {
    let mut client = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let Some(head) = read_head(&mut reader)? else {
        return Ok(());
    };
    let body = read_body(&mut reader, head.content_length())?;
    let (method, target) = head.method_and_target();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let params = if method == "POST" {
        parse_query(&String::from_utf8_lossy(&body))
    } else {
        parse_query(query)
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect();
    scopes.sort();
    scopes.dedup();
    let user = head.header("authorization").and_then(|a| {
        let encoded = a.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        String::from_utf8(decoded).ok()
    });
    let refresh = get("grant_type").as_deref() == Some("refresh_token");
    let authenticated = if refresh {
        get("refresh_token").as_deref() == Some(s.refresh_token.as_str())
    } else {
        user.as_deref() == Some(format!("{}:{}", s.user, s.password).as_str())
    };
    let anonymous = user.is_none() && !refresh;
    s.requests.lock().unwrap().push(TokenRequest {
        method: method.clone(),
        user: user
            .as_ref()
            .map(|u| u.split(':').next().unwrap_or("").to_string()),
        refresh,
        scopes: scopes.clone(),
        granted: authenticated,
    });
    if !authenticated && !anonymous {
        return respond(
            &mut client,
            401,
            "Unauthorized",
            &[("Content-Type", "application/json".into())],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}"#,
        );
    }
    // Anonymous callers get a token without any access: the registry then refuses them.
    let access: Vec<serde_json::Value> = if authenticated {
        scopes
            .iter()
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect()
    } else {
        Vec::new()
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let lifetime = s.lifetime.lock().unwrap().as_secs() as i64;
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&s.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": s.user, "aud": get("service").unwrap_or_default(),
        "exp": now + lifetime - 60, "nbf": now - 1, "iat": now,
        "jti": format!("{now}-{}", s.requests.lock().unwrap().len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = s
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .expect("signing");
    let token = format!("{signing_input}.{}", b64url(signature.as_ref()));
    let answer = if refresh {
        serde_json::json!({"access_token": token, "expires_in": 300})
    } else {
        serde_json::json!({"token": token, "expires_in": 300})
    };
    respond(
        &mut client,
        200,
        "OK",
        &[("Content-Type", "application/json".into())],
        answer.to_string().as_bytes(),
    )
}
