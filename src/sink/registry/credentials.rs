//! Finding a registry's credentials as the docker CLI does (docker/cli
//! `cli/config/configfile/file.go`, `cli/config/credentials/`).
//!
//! The file is `$DOCKER_CONFIG/config.json`, by default `$HOME/.docker/config.json`. For a
//! registry it consults, in order: `credHelpers[<key>]` (a helper for that registry), else
//! `credsStore` (one helper for all), else `auths[<key>]`. `<key>` is `host[:port]`, except for
//! Docker Hub, whose key is `https://index.docker.io/v1/`; an `auths` key written as a URL
//! (`https://host:port/v2/`) matches its host too. A helper is the program
//! `docker-credential-<name>`, run as `… get` with the key on stdin, answering
//! `{"ServerURL","Username","Secret"}`; the Username `<token>` means the Secret is an identity
//! token (a refresh token for the registry's token server), not a password.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use super::secret::Secret;

/// Docker Hub's key in config.json and for helpers (docker/cli `registry.IndexServer`).
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What the user logged in with.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A user name and password (or a personal access token used as one): Basic auth, and Basic
    /// auth on the token server's realm.
    Password { username: String, password: Secret },
    /// An identity token (OAuth2 refresh token) from `docker login`'s token flow.
    IdentityToken { username: String, token: Secret },
}

impl Credentials {
    pub fn username(&self) -> &str {
        match self {
            Credentials::Password { username, .. }
            | Credentials::IdentityToken { username, .. } => username,
        }
    }
}

/// Where credentials were looked for and what was found: the CLI shows this (a `sudo` user
/// sees root's config unless told otherwise).
#[derive(Clone, Debug)]
pub struct CredentialLookup {
    /// The config.json consulted, whether or not it exists (`None`: no config directory is
    /// known, neither `DOCKER_CONFIG` nor `HOME` is set).
    pub config_file: Option<PathBuf>,
    /// Whether that file exists.
    pub config_found: bool,
    /// Who answered: `credHelpers (docker-credential-NAME)`, `credsStore (…)`, `auths`, or
    /// `none` (anonymous).
    pub source: String,
    pub credentials: Option<Credentials>,
}

/// The key docker uses for a registry domain (as in `crate::reference::Reference::domain`).
pub fn registry_key(domain: &str) -> String {
    match domain {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_KEY.to_string(),
        other => other.to_string(),
    }
}

/// The docker config directory: `explicit`, else `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn config_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".docker"))
}

/// Looks up the credentials for `domain`. `helper_path` is where `docker-credential-*`
/// programs are searched (a `PATH`-style list; `None`: the process's `PATH`).
pub fn lookup(
    domain: &str,
    config_dir: Option<&Path>,
    helper_path: Option<&OsStr>,
) -> Result<CredentialLookup> {
    let key = registry_key(domain);
    let Some(file) = config_dir.map(|d| d.join("config.json")) else {
        return Ok(CredentialLookup {
            config_file: None,
            config_found: false,
            source: "none".into(),
            credentials: None,
        });
    };
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(CredentialLookup {
                config_file: Some(file),
                config_found: false,
                source: "none".into(),
                credentials: None,
            })
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let config: ConfigFile = serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "parsing {} (docker's config file): {}",
            file.display(),
            without_values(&e)
        )
    })?;
    let (source, credentials) = if let Some(helper) = config.cred_helpers.get(&key) {
        (
            format!("credHelpers (docker-credential-{helper})"),
            run_helper(helper, &key, helper_path)?,
        )
    } else if let Some(store) = config.creds_store.as_deref().filter(|s| !s.is_empty()) {
        (
            format!("credsStore (docker-credential-{store})"),
            run_helper(store, &key, helper_path)?,
        )
    } else {
        let entry = config.auths.get(&key).or_else(|| {
            config
                .auths
                .iter()
                .find(|(k, _)| hostname_of_key(k) == hostname_of_key(&key))
                .map(|(_, v)| v)
        });
        let creds = match entry {
            Some(e) => e
                .credentials()
                .with_context(|| format!("the auths entry for {key} in {}", file.display()))?,
            None => None,
        };
        ("auths".to_string(), creds)
    };
    let source = if credentials.is_some() {
        source
    } else {
        "none".to_string()
    };
    Ok(CredentialLookup {
        config_file: Some(file),
        config_found: true,
        source,
        credentials,
    })
}

/// docker/cli `ConvertToHostname`: the key without scheme and path.
fn hostname_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ConfigFile {
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers")]
    cred_helpers: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

impl AuthEntry {
    fn credentials(&self) -> Result<Option<Credentials>> {
        let (mut username, mut password) = (self.username.clone(), self.password.clone());
        if let Some(auth) = self.auth.as_deref().filter(|a| !a.is_empty()) {
            // The decoded bytes hold the password: errors never show them.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .context("its \"auth\" is not base64 of user:password")?;
            let (user, pass) = decoded
                .split_once(':')
                .context("its \"auth\" is not base64 of user:password")?;
            username = Some(user.to_string());
            password = Some(pass.to_string());
        }
        if let Some(token) = self.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken {
                username: username.unwrap_or_default(),
                token: Secret::new(token),
            }));
        }
        Ok(match (username, password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(Credentials::Password {
                username: u,
                password: Secret::new(p),
            }),
            _ => None,
        })
    }
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Runs `docker-credential-<name> get` for `key`. "credentials not found" means anonymous.
fn run_helper(name: &str, key: &str, helper_path: Option<&OsStr>) -> Result<Option<Credentials>> {
    if name.contains('/') || name.is_empty() {
        bail!("invalid credential helper name {name:?} in docker's config file");
    }
    let program = format!("docker-credential-{name}");
    let resolved = match helper_path {
        Some(path) => std::env::split_paths(path)
            .map(|dir| dir.join(&program))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "credential helper {program} not found in {}",
                    path.to_string_lossy()
                )
            })?,
        None => PathBuf::from(&program),
    };
    let mut child = Command::new(&resolved)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running credential helper {program}"))?;
    // A helper that exits without reading its stdin is answered by its exit status.
    let _ = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(key.as_bytes());
    let out = child
        .wait_with_output()
        .with_context(|| format!("running credential helper {program}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let said = if said.is_empty() {
            String::from_utf8_lossy(&out.stderr).trim().to_string()
        } else {
            said
        };
        // docker-credential-helpers' `credentials.ErrCredentialsNotFound`.
        if said.contains("credentials not found") {
            return Ok(None);
        }
        // What a failing helper says is shown, but never what might be its answer: a helper
        // that printed its JSON and then failed would show the secret.
        let first = said.lines().next().unwrap_or_default();
        let said: String = if first.trim_start().starts_with('{') || first.contains("Secret") {
            "(its output is not shown: it may hold a secret)".to_string()
        } else {
            first.chars().take(200).collect()
        };
        bail!(
            "credential helper {program} failed for {key} ({}): {said}",
            out.status
        );
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "credential helper {program} did not answer the JSON a helper gives: {}",
            without_values(&e)
        )
    })?;
    let secret = Secret::new(answer.secret);
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if answer.username == "<token>" {
        Credentials::IdentityToken {
            username: String::new(),
            token: secret,
        }
    } else {
        Credentials::Password {
            username: answer.username,
            password: secret,
        }
    }))
}

/// A JSON error without the text serde quotes from the input (which, in a credentials file or
/// a helper's answer, may be a password): its kind and position only.
fn without_values(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "not of the expected shape",
        serde_json::error::Category::Eof => "cut short",
    };
    format!("{kind} at line {}, column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    fn password(l: &CredentialLookup) -> (String, String) {
        match l.credentials.as_ref().unwrap() {
            Credentials::Password { username, password } => {
                (username.clone(), password.expose().to_string())
            }
            other => panic!("expected a password, got {other:?}"),
        }
    }

    #[test]
    fn auths_keys_match_as_docker_matches_them() {
        let dir = tempfile::tempdir().unwrap();
        // alice:s3cret, bob:pw, hub:hubpw
        write_config(
            dir.path(),
            r#"{"auths": {
                "reg.example:5000": {"auth": "YWxpY2U6czNjcmV0"},
                "https://other.example/v2/": {"auth": "Ym9iOnB3"},
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"}
            }}"#,
        );
        let l = lookup("reg.example:5000", Some(dir.path()), None).unwrap();
        assert!(l.config_found);
        assert_eq!(l.source, "auths");
        assert_eq!(password(&l), ("alice".into(), "s3cret".into()));
        let l = lookup("other.example", Some(dir.path()), None).unwrap();
        assert_eq!(password(&l), ("bob".into(), "pw".into()));
        let l = lookup("docker.io", Some(dir.path()), None).unwrap();
        assert_eq!(password(&l), ("hub".into(), "hubpw".into()));
        // A port is part of the key: reg.example alone has no entry.
        let l = lookup("reg.example", Some(dir.path()), None).unwrap();
        assert!(l.credentials.is_none());
        assert_eq!(l.source, "none");
        assert!(
            !format!("{:?}", lookup("reg.example:5000", Some(dir.path()), None)).contains("s3cret")
        );
    }

    #[test]
    fn identity_tokens_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let l = lookup("reg.example", Some(dir.path()), None).unwrap();
        assert!(!l.config_found && l.credentials.is_none());
        assert_eq!(l.config_file.unwrap(), dir.path().join("config.json"));
        write_config(
            dir.path(),
            r#"{"auths": {"reg.example": {"identitytoken": "refresh-me"}}}"#,
        );
        let l = lookup("reg.example", Some(dir.path()), None).unwrap();
        match l.credentials.unwrap() {
            Credentials::IdentityToken { token, .. } => assert_eq!(token.expose(), "refresh-me"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_broken_auth_entry_is_an_error_that_does_not_show_it() {
        let dir = tempfile::tempdir().unwrap();
        // "user-without-colon-s3cret" in base64.
        write_config(
            dir.path(),
            r#"{"auths": {"reg.example": {"auth": "dXNlci13aXRob3V0LWNvbG9uLXMzY3JldA=="}}}"#,
        );
        let err = format!(
            "{:#}",
            lookup("reg.example", Some(dir.path()), None).unwrap_err()
        );
        assert!(err.contains("not base64 of user:password"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn helpers_come_before_auths_and_not_found_is_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let helper = bin.join("docker-credential-unit");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread key\ncase \"$key\" in\n  reg.example) echo '{\"ServerURL\":\"reg.example\",\"Username\":\"carol\",\"Secret\":\"pw-from-helper\"}';;\n  tok.example) echo '{\"ServerURL\":\"tok.example\",\"Username\":\"<token>\",\"Secret\":\"idtok\"}';;\n  *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        write_config(
            dir.path(),
            r#"{"credsStore": "unit", "auths": {"reg.example": {"auth": "YWxpY2U6czNjcmV0"}}}"#,
        );
        let path = bin.as_os_str();
        let l = lookup("reg.example", Some(dir.path()), Some(path)).unwrap();
        assert_eq!(l.source, "credsStore (docker-credential-unit)");
        assert_eq!(password(&l), ("carol".into(), "pw-from-helper".into()));
        let l = lookup("tok.example", Some(dir.path()), Some(path)).unwrap();
        assert!(matches!(
            l.credentials,
            Some(Credentials::IdentityToken { .. })
        ));
        let l = lookup("nobody.example", Some(dir.path()), Some(path)).unwrap();
        assert!(l.credentials.is_none());
        // credHelpers names a helper per registry, ahead of credsStore.
        write_config(
            dir.path(),
            r#"{"credsStore": "unit", "credHelpers": {"reg.example": "missing"}}"#,
        );
        let err = format!(
            "{:#}",
            lookup("reg.example", Some(dir.path()), Some(path)).unwrap_err()
        );
        assert!(err.contains("docker-credential-missing not found"), "{err}");
    }

    #[test]
    fn docker_hub_has_its_legacy_key() {
        assert_eq!(registry_key("docker.io"), DOCKER_HUB_KEY);
        assert_eq!(registry_key("ghcr.io"), "ghcr.io");
        assert_eq!(registry_key("[::1]:5000"), "[::1]:5000");
        assert_eq!(
            hostname_of_key("https://index.docker.io/v1/"),
            "index.docker.io"
        );
        assert_eq!(hostname_of_key("localhost:5000"), "localhost:5000");
    }
}
