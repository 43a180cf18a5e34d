//! Docker client configurations for the tests: a config.json with `auths`, and a
//! `docker-credential-<name>` helper script installed in a directory of its own.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::fault_proxy::base64_encode;

/// Writes `<dir>/config.json` with one `auths` entry (`auth` = base64 user:password).
pub fn write_auths(dir: &Path, key: &str, user: &str, password: &str) {
    let auth = base64_encode(format!("{user}:{password}").as_bytes());
    let config = serde_json::json!({"auths": {key: {"auth": auth}}});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Writes `<dir>/config.json` naming helpers: `credsStore` and/or `credHelpers`.
pub fn write_helpers(dir: &Path, store: Option<&str>, per_registry: &[(&str, &str)]) {
    let mut config = serde_json::json!({"auths": {}});
    if let Some(store) = store {
        config["credsStore"] = store.into();
    }
    if !per_registry.is_empty() {
        let map: serde_json::Map<String, serde_json::Value> = per_registry
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        config["credHelpers"] = map.into();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// Installs `docker-credential-<name>` in `<dir>/bin` answering `get` for the given
/// (server URL, username, secret) entries and "credentials not found" otherwise; each call's
/// stdin goes to `<dir>/<name>.calls`, one line per call. Returns the bin directory.
pub fn install_helper(dir: &Path, name: &str, entries: &[(&str, &str, &str)]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join(format!("{name}.calls"));
    let mut script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r key\necho \"$key\" >> '{}'\ncase \"$key\" in\n",
        calls.display()
    );
    for (url, user, secret) in entries {
        let answer = serde_json::json!({"ServerURL": url, "Username": user, "Secret": secret});
        script.push_str(&format!("  '{url}') echo '{answer}' ;;\n"));
    }
    script.push_str("  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n");
    let path = bin.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// The server URLs a helper was asked for.
pub fn helper_calls(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.calls")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
