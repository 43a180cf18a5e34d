//! Where the store is: its graph root, driver and additional image stores, found the way
//! containers-storage finds them (`types/options.go`, `types/utils.go`), so that oci-export
//! reads the store podman, buildah and CRI-O use on this host.
//!
//! - The configuration file: `CONTAINERS_STORAGE_CONF` when set; else, for a rootless user,
//!   `$XDG_CONFIG_HOME/containers/storage.conf` (or `~/.config/…`) if it exists; else
//!   `/etc/containers/storage.conf`, else `/usr/share/containers/storage.conf`.
//! - The graph root: `--data-root`; else the file's `graphroot` (a rootless user's own file may
//!   give `rootless_storage_path` instead); else `/var/lib/containers/storage` as root, and
//!   `rootless_storage_path` of the system file or `$XDG_DATA_HOME/containers/storage` (or
//!   `~/.local/share/containers/storage`) for a rootless user. A system file's `graphroot` is
//!   root's store, never a rootless user's, as in containers-storage.
//! - The driver: `STORAGE_DRIVER`, else the file's `driver` (`overlay2` means `overlay`), else
//!   what the graph root holds ([`super::layout`]).
//! - `additionalimagestores` (`[storage.options]`): more read-only stores of the same shape.
//!   A rootless user gets them only from their own file, as in containers-storage.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

const ROOTFUL_GRAPH_ROOT: &str = "/var/lib/containers/storage";
const SYSTEM_CONF: &str = "/etc/containers/storage.conf";
const VENDOR_CONF: &str = "/usr/share/containers/storage.conf";

/// What the environment says about where the store is.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// The user whose store it is: 0 means the rootful store. Inside `podman unshare` (a user
    /// namespace where we are root) this is the rootless user, as podman tells its children.
    pub uid: u32,
    pub home: Option<PathBuf>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_data_home: Option<PathBuf>,
    /// `CONTAINERS_STORAGE_CONF`.
    pub storage_conf: Option<PathBuf>,
    /// `STORAGE_DRIVER`.
    pub storage_driver: Option<String>,
    /// Other variables a path in storage.conf may name (`$HOME`, `$USER`, …).
    pub vars: Vec<(String, String)>,
}

impl Environment {
    /// This process's environment.
    pub fn current() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Environment {
            uid: store_owner(
                std::env::var("_CONTAINERS_ROOTLESS_UID").ok().as_deref(),
                nix::unistd::geteuid().as_raw(),
            ),
            home: var("HOME").map(PathBuf::from),
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            xdg_data_home: var("XDG_DATA_HOME").map(PathBuf::from),
            storage_conf: std::env::var_os("CONTAINERS_STORAGE_CONF").map(PathBuf::from),
            storage_driver: std::env::var("STORAGE_DRIVER")
                .ok()
                .filter(|v| !v.is_empty()),
            vars: std::env::vars().collect(),
        }
    }

    fn rootless(&self) -> bool {
        self.uid != 0
    }
}

/// Whose store to read: `podman unshare` runs its command as root in a user namespace and
/// records the real user in `_CONTAINERS_ROOTLESS_UID` (containers-storage
/// `pkg/unshare` GetRootlessEUID), which is where that user's rootless files can be read.
fn store_owner(rootless_uid: Option<&str>, euid: u32) -> u32 {
    rootless_uid
        .and_then(|uid| uid.parse().ok())
        .unwrap_or(euid)
}

/// The store's location as configured; the driver, when not configured, is found later from
/// what the graph root holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub graph_root: PathBuf,
    /// The driver name configured (`overlay`, `vfs`, …), if any.
    pub driver: Option<String>,
    pub additional_image_stores: Vec<PathBuf>,
    /// The storage.conf read, for messages.
    pub file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct ConfFile {
    #[serde(default)]
    storage: StorageTable,
}

#[derive(Deserialize, Default)]
struct StorageTable {
    driver: Option<String>,
    graphroot: Option<String>,
    rootless_storage_path: Option<String>,
    #[serde(default)]
    options: OptionsTable,
}

#[derive(Deserialize, Default)]
struct OptionsTable {
    #[serde(default)]
    additionalimagestores: Vec<String>,
}

/// Which file is read, and whose it is.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// `CONTAINERS_STORAGE_CONF` or the rootless user's own file: its graphroot is theirs.
    Own(PathBuf),
    /// The system's file: its graphroot is root's store.
    System(PathBuf),
    None,
}

/// Finds the store's configuration. `data_root` (`--data-root`) overrides the graph root only:
/// the driver and additional stores still come from storage.conf, as with `podman --root`.
pub fn resolve(env: &Environment, data_root: Option<&Path>) -> Result<StorageConfig> {
    resolve_with(
        env,
        data_root,
        &[SYSTEM_CONF, VENDOR_CONF].map(PathBuf::from),
    )
}

/// [`resolve`], with the system's files given (tests use their own).
fn resolve_with(
    env: &Environment,
    data_root: Option<&Path>,
    system_files: &[PathBuf],
) -> Result<StorageConfig> {
    let source = config_source(env, system_files, &|p: &Path| p.exists());
    let (file, conf) = match &source {
        Source::Own(path) | Source::System(path) => (Some(path.clone()), read_conf(path)?),
        Source::None => (None, ConfFile::default()),
    };
    let storage = conf.storage;
    let own = matches!(source, Source::Own(_)) || !env.rootless();
    let expand = |s: &str| expand_path(s, env);

    let default_rootless = || -> Result<PathBuf> {
        let data_home = match (&env.xdg_data_home, &env.home) {
            (Some(dir), _) => dir.clone(),
            (None, Some(home)) => home.join(".local/share"),
            (None, None) => anyhow::bail!(
                "cannot find the rootless containers-storage graph root: neither XDG_DATA_HOME \
                 nor HOME is set (give it with --data-root)"
            ),
        };
        Ok(data_home.join("containers/storage"))
    };
    let graph_root = match data_root {
        Some(root) => root.to_path_buf(),
        None if !env.rootless() => storage
            .graphroot
            .as_deref()
            .map(expand)
            .unwrap_or_else(|| PathBuf::from(ROOTFUL_GRAPH_ROOT)),
        None => {
            let from_own = own.then_some(storage.graphroot.as_deref()).flatten();
            match from_own.or(storage.rootless_storage_path.as_deref()) {
                Some(path) => expand(path),
                None => default_rootless()?,
            }
        }
    };
    let driver = env
        .storage_driver
        .clone()
        .or(storage.driver)
        .filter(|d| !d.is_empty())
        .map(|d| {
            if d == "overlay2" {
                "overlay".to_string()
            } else {
                d
            }
        });
    let additional_image_stores = if own {
        storage
            .options
            .additionalimagestores
            .iter()
            .map(|s| expand(s))
            .collect()
    } else {
        Vec::new()
    };
    Ok(StorageConfig {
        graph_root,
        driver,
        additional_image_stores,
        file,
    })
}

fn config_source(
    env: &Environment,
    system_files: &[PathBuf],
    exists: &dyn Fn(&Path) -> bool,
) -> Source {
    if let Some(path) = &env.storage_conf {
        // containers-storage reads only this file when the variable is set; a missing one
        // leaves the defaults.
        return if exists(path) {
            Source::Own(path.clone())
        } else {
            Source::None
        };
    }
    if env.rootless() {
        let own = match (&env.xdg_config_home, &env.home) {
            (Some(dir), _) => Some(dir.join("containers/storage.conf")),
            (None, Some(home)) => Some(home.join(".config/containers/storage.conf")),
            (None, None) => None,
        };
        if let Some(path) = own.filter(|p| exists(p)) {
            return Source::Own(path);
        }
    }
    system_files
        .iter()
        .find(|p| exists(p))
        .cloned()
        .map_or(Source::None, Source::System)
}

fn read_conf(path: &Path) -> Result<ConfFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_conf(&text).with_context(|| {
        format!(
            "{} is not a storage.conf oci-export can read (fix it, or point \
             CONTAINERS_STORAGE_CONF at another)",
            path.display()
        )
    })
}

fn parse_conf(text: &str) -> Result<ConfFile> {
    Ok(toml::from_str(text)?)
}

/// `$UID`, `$VAR` and `${VAR}` in a configured path, as containers-storage expands them
/// (`expandEnvPath`: `$UID` first, then the environment; an unset variable is empty).
fn expand_path(path: &str, env: &Environment) -> PathBuf {
    let uid = env.uid.to_string();
    let lookup = |name: &str| -> String {
        match name {
            "UID" => uid.clone(),
            "HOME" => env
                .home
                .as_ref()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            _ => env
                .vars
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        }
    };
    let mut out = String::new();
    let mut rest = path;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => (braced, braced.len() + 1),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() && len == 0 {
            out.push('$');
        } else {
            out.push_str(&lookup(name));
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    PathBuf::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootless_env(home: &Path) -> Environment {
        Environment {
            uid: 1000,
            home: Some(home.to_path_buf()),
            vars: vec![("USER".into(), "alice".into())],
            ..Environment::default()
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn parses_the_keys_we_read_and_ignores_the_rest() {
        let conf = parse_conf(
            r#"
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/srv/containers"

[storage.options]
additionalimagestores = ["/mnt/ro-store", "/opt/$UID/store"]
pull_options = {enable_partial_images = "false"}

[storage.options.overlay]
mountopt = "nodev"
"#,
        )
        .unwrap();
        assert_eq!(conf.storage.driver.as_deref(), Some("overlay"));
        assert_eq!(conf.storage.graphroot.as_deref(), Some("/srv/containers"));
        assert_eq!(
            conf.storage.options.additionalimagestores,
            ["/mnt/ro-store", "/opt/$UID/store"]
        );
        assert!(parse_conf("").unwrap().storage.graphroot.is_none());
        assert!(parse_conf("[storage\ndriver=").is_err());
        assert!(parse_conf("[storage]\ndriver = 3").is_err());
    }

    fn system() -> [PathBuf; 2] {
        [SYSTEM_CONF, VENDOR_CONF].map(PathBuf::from)
    }

    #[test]
    fn configuration_file_order() {
        let config_source = |env: &Environment, exists: &dyn Fn(&Path) -> bool| {
            super::config_source(env, &system(), exists)
        };
        let all = |p: &Path| {
            p.starts_with("/etc") || p.starts_with("/usr") || p.starts_with("/home/a/.config")
        };
        let root = Environment::default();
        assert_eq!(
            config_source(&root, &all),
            Source::System(SYSTEM_CONF.into())
        );
        assert_eq!(
            config_source(&root, &|p: &Path| p.starts_with("/usr")),
            Source::System(VENDOR_CONF.into())
        );
        assert_eq!(config_source(&root, &|_: &Path| false), Source::None);
        // Root never reads a home directory's file.
        let root_with_home = Environment {
            home: Some("/home/a".into()),
            ..Environment::default()
        };
        assert_eq!(
            config_source(&root_with_home, &all),
            Source::System(SYSTEM_CONF.into())
        );
        let user = rootless_env(Path::new("/home/a"));
        assert_eq!(
            config_source(&user, &all),
            Source::Own("/home/a/.config/containers/storage.conf".into())
        );
        let xdg = Environment {
            xdg_config_home: Some("/home/a/.config/alt".into()),
            ..user.clone()
        };
        assert_eq!(
            config_source(&xdg, &all),
            Source::Own("/home/a/.config/alt/containers/storage.conf".into())
        );
        // The variable wins; if its file is missing, no file is read at all.
        let env = Environment {
            storage_conf: Some("/tmp/my.conf".into()),
            ..user.clone()
        };
        assert_eq!(config_source(&env, &all), Source::None);
        assert_eq!(
            config_source(&env, &|_: &Path| true),
            Source::Own("/tmp/my.conf".into())
        );
    }

    #[test]
    fn rootful_graph_root() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("storage.conf");
        let env = Environment {
            storage_conf: Some(conf.clone()),
            ..Environment::default()
        };
        // No file: the rootful default.
        let found = resolve(&env, None).unwrap();
        assert_eq!(found.graph_root, PathBuf::from(ROOTFUL_GRAPH_ROOT));
        assert_eq!(found.driver, None);
        assert_eq!(found.file, None);

        write(
            &conf,
            "[storage]\ndriver = \"overlay2\"\ngraphroot = \"/srv/$UID/store\"\n\
             [storage.options]\nadditionalimagestores = [\"/ro/a\", \"/ro/b\"]\n",
        );
        let found = resolve(&env, None).unwrap();
        assert_eq!(found.graph_root, PathBuf::from("/srv/0/store"));
        assert_eq!(
            found.driver.as_deref(),
            Some("overlay"),
            "overlay2 is overlay"
        );
        assert_eq!(
            found.additional_image_stores,
            ["/ro/a", "/ro/b"].map(PathBuf::from)
        );
        assert_eq!(found.file, Some(conf.clone()));

        // --data-root replaces the graph root only.
        let found = resolve(&env, Some(Path::new("/elsewhere"))).unwrap();
        assert_eq!(found.graph_root, PathBuf::from("/elsewhere"));
        assert_eq!(found.additional_image_stores.len(), 2);

        // STORAGE_DRIVER wins over the file.
        let env = Environment {
            storage_driver: Some("vfs".into()),
            ..env
        };
        assert_eq!(resolve(&env, None).unwrap().driver.as_deref(), Some("vfs"));
    }

    #[test]
    fn rootless_graph_root() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let env = rootless_env(&home);
        // CONTAINERS_STORAGE_CONF names a file that does not exist: no file is read at all
        // (not even the host's), and the XDG default under the home directory is the root.
        let found = resolve(
            &Environment {
                storage_conf: Some(dir.path().join("absent.conf")),
                ..env.clone()
            },
            None,
        )
        .unwrap();
        assert_eq!(
            found.graph_root,
            home.join(".local/share/containers/storage")
        );
        let found = resolve(
            &Environment {
                storage_conf: Some(dir.path().join("absent.conf")),
                xdg_data_home: Some(dir.path().join("data")),
                ..env.clone()
            },
            None,
        )
        .unwrap();
        assert_eq!(found.graph_root, dir.path().join("data/containers/storage"));

        // The user's own file: its graphroot, else its rootless_storage_path.
        let own = home.join(".config/containers/storage.conf");
        write(
            &own,
            "[storage]\ngraphroot = \"$HOME/imgs\"\nrootless_storage_path = \"/x\"\n\
             [storage.options]\nadditionalimagestores = [\"/ro/${USER}\"]\n",
        );
        let found = resolve(&env, None).unwrap();
        assert_eq!(found.graph_root, home.join("imgs"));
        assert_eq!(found.additional_image_stores, [PathBuf::from("/ro/alice")]);
        assert_eq!(found.file, Some(own.clone()));
        write(&own, "[storage]\nrootless_storage_path = \"/data/$UID\"\n");
        assert_eq!(
            resolve(&env, None).unwrap().graph_root,
            PathBuf::from("/data/1000")
        );
    }

    #[test]
    fn a_system_file_is_roots_not_a_rootless_users() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let system = [dir.path().join("etc.conf"), dir.path().join("usr.conf")];
        write(
            &system[1],
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"/var/lib/containers/storage\"\n\
             [storage.options]\nadditionalimagestores = [\"/ro\"]\n",
        );
        // Root: the system file's graphroot and stores.
        let found = resolve_with(&Environment::default(), None, &system).unwrap();
        assert_eq!(found.graph_root, PathBuf::from(ROOTFUL_GRAPH_ROOT));
        assert_eq!(found.additional_image_stores, [PathBuf::from("/ro")]);
        assert_eq!(found.file, Some(system[1].clone()));
        // A rootless user without a file of their own: the system file's driver, but not its
        // graphroot (root's store) nor its stores.
        let env = rootless_env(&home);
        let found = resolve_with(&env, None, &system).unwrap();
        assert_eq!(
            found.graph_root,
            home.join(".local/share/containers/storage")
        );
        assert_eq!(found.driver.as_deref(), Some("vfs"));
        assert!(found.additional_image_stores.is_empty());
        // ... except its rootless_storage_path, which is meant for them.
        write(
            &system[0],
            "[storage]\ngraphroot = \"/var/lib/x\"\nrootless_storage_path = \"/rl/$UID\"\n",
        );
        let found = resolve_with(&env, None, &system).unwrap();
        assert_eq!(found.graph_root, PathBuf::from("/rl/1000"));
        assert_eq!(found.file, Some(system[0].clone()));
        // Without HOME or XDG_DATA_HOME there is no default to fall back on.
        std::fs::remove_file(&system[0]).unwrap();
        let homeless = Environment { home: None, ..env };
        let err = resolve_with(&homeless, None, &system).unwrap_err();
        assert!(err.to_string().contains("--data-root"), "{err}");
    }

    #[test]
    fn inside_podman_unshare_the_store_is_the_rootless_users() {
        assert_eq!(store_owner(None, 0), 0);
        assert_eq!(store_owner(None, 1000), 1000);
        assert_eq!(store_owner(Some("1000"), 0), 1000);
        assert_eq!(store_owner(Some(""), 0), 0);
        assert_eq!(store_owner(Some("x"), 1000), 1000);
    }

    #[test]
    fn path_expansion() {
        let env = Environment {
            uid: 1000,
            home: Some("/home/a".into()),
            vars: vec![("USER".into(), "alice".into())],
            ..Environment::default()
        };
        let cases = [
            ("/plain/path", "/plain/path"),
            ("$HOME/x", "/home/a/x"),
            ("/run/user/$UID/s", "/run/user/1000/s"),
            ("/u/${USER}/s", "/u/alice/s"),
            ("/u/$UNSET/s", "/u//s"),
            ("/cost/$", "/cost/$"),
        ];
        for (input, want) in cases {
            assert_eq!(expand_path(input, &env), PathBuf::from(want), "{input}");
        }
    }
}
