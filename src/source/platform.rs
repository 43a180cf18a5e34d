//! Platforms of multi-platform images (`linux/amd64`, `linux/arm64/v8`), normalized as
//! containerd's `platforms` package does, so that `--platform` means what it means to
//! `docker save --platform` and `ctr`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An OCI platform: os, architecture and the optional variant (as index entries and image
/// configs write them).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Which platforms of a multi-platform image to export (`--platform`, `--all-platforms`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformChoice {
    /// The platform of the machine oci-export runs on.
    #[default]
    Host,
    Only(Platform),
    All,
}

impl PlatformChoice {
    /// Whether a manifest for `platform` is selected. An image without platforms (a plain
    /// manifest) is always selected.
    pub fn selects(&self, platform: &Platform) -> bool {
        match self {
            PlatformChoice::All => true,
            PlatformChoice::Host => Platform::host().matches(platform),
            PlatformChoice::Only(wanted) => wanted.matches(platform),
        }
    }
}

impl Platform {
    /// The platform an image config says it is for (`os`, `architecture`, `variant`), if it
    /// says.
    pub fn of_config(config: &[u8]) -> Option<Platform> {
        serde_json::from_slice(config).ok()
    }

    /// This machine's platform, in Go's names (the ones images use).
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
        .normalized()
    }

    /// Go's names for common aliases, and the variants that are implied (`arm64` is `v8`,
    /// `amd64` is `v1`, plain `arm` is `v7`).
    pub fn normalized(&self) -> Platform {
        let os = self.os.to_ascii_lowercase();
        let (architecture, variant) = match (
            self.architecture.to_ascii_lowercase().as_str(),
            self.variant.as_deref().map(str::to_ascii_lowercase),
        ) {
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v.filter(|v| v != "v1")),
            ("aarch64" | "arm64", v) => ("arm64", v.filter(|v| v != "v8" && v != "8")),
            ("armhf", _) => ("arm", Some("v7".to_string())),
            ("armel", _) => ("arm", Some("v6".to_string())),
            ("arm", None) => ("arm", Some("v7".to_string())),
            ("i386" | "386", v) => ("386", v),
            (arch, v) => {
                return Platform {
                    os,
                    architecture: arch.to_string(),
                    variant: v.filter(|v| !v.is_empty()),
                }
            }
        };
        Platform {
            os,
            architecture: architecture.to_string(),
            variant: variant.filter(|v| !v.is_empty()),
        }
    }

    /// Whether `other` is this platform, after normalizing both.
    pub fn matches(&self, other: &Platform) -> bool {
        self.normalized() == other.normalized()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], like linux/amd64 or linux/arm64/v8")]
pub struct InvalidPlatform(String);

impl FromStr for Platform {
    type Err = InvalidPlatform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(InvalidPlatform(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        }
        .normalized())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalizes() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/v6").to_string(), "linux/arm/v6");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64"] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matching() {
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(!p("linux/arm64").matches(&p("linux/amd64")));
        assert!(!p("linux/arm/v7").matches(&p("linux/arm/v6")));
        let index_entry: Platform =
            serde_json::from_str(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#)
                .unwrap();
        assert!(PlatformChoice::Only(p("linux/arm64")).selects(&index_entry));
        assert!(PlatformChoice::All.selects(&index_entry));
        assert!(PlatformChoice::Host.selects(&Platform::host()));
    }
}
