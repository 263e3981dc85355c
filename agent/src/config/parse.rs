//! The forms a setting's value takes (durations, sizes, TOML values) and the checks of single
//! settings that read files or paths: secrets, trusted keys, allowed devices, the metrics file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use fleetlet_manifests::AbsPath;
use fleetlet_manifests::signature::PublicKey;
use serde::{Deserialize, Serialize};

use super::{ConfigError, MIB, Token};

/// The value of the `container_runtime` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRuntimeKind {
    Podman,
    Docker,
    None,
}

/// The value of the `systemd_scope` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemdScope {
    System,
    User,
    None,
}

/// How a setting's type is read from a TOML value; the message is the reason only, the caller
/// names the setting.
pub trait FromToml: Sized {
    fn from_toml(value: toml::Value) -> Result<Self, String>;
}

/// The types TOML spells as serde does.
macro_rules! from_toml_by_serde {
    ($($ty:ty),*) => {$(
        impl FromToml for $ty {
            fn from_toml(value: toml::Value) -> Result<Self, String> {
                value.try_into().map_err(|e: toml::de::Error| e.message().to_owned())
            }
        }
    )*};
}

from_toml_by_serde!(
    String,
    PathBuf,
    Vec<PathBuf>,
    usize,
    bool,
    ContainerRuntimeKind,
    SystemdScope
);

/// A duration is a string, as on the command line: `resync-interval = "20s"`.
impl FromToml for Duration {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(text) => parse_duration(&text),
            other => Err(format!("{other} is not a duration string such as \"10s\"")),
        }
    }
}

/// The one `u64` setting is a size: `store-max-bytes = 67108864` or `store-max-bytes = "64MiB"`.
impl FromToml for u64 {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Integer(count) => {
                u64::try_from(count).map_err(|_| format!("{count} is not a size"))
            }
            toml::Value::String(text) => parse_bytes(&text),
            other => Err(format!(
                "{other} is not a size such as 67108864 or \"64MiB\""
            )),
        }
    }
}
/// Parses durations such as `10s`, `500ms`, `2m`, `1h` or `1m30s`: the wire crate's one
/// duration parser, in the agent's spelling (parts added up, a unit always).
pub use fleetlet_manifests::duration::parse_compound as parse_duration;

/// Parses sizes such as `1048576`, `512KiB`, `64MiB` or `1GiB` (binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size such as 67108864, 512KiB, 64MiB or 1GiB");
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    if digits == 0 {
        return Err(bad());
    }
    let number: u64 = trimmed[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match trimmed[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => MIB,
        "GiB" => 1024 * MIB,
        _ => return Err(bad()),
    };
    number.checked_mul(unit).ok_or_else(bad)
}

pub(super) fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

/// A secret given inline (flag or environment) or as a file. Both at once is refused rather than
/// guessed at; layering has already dropped a file named in the TOML file when the flags or the
/// environment give the secret inline.
pub(super) fn read_secret(
    setting: &'static str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<Token>, ConfigError> {
    let text = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                setting,
                format!("set only one of {setting} and {setting}_FILE"),
            ));
        }
        (Some(text), None) => text,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::ReadToken { path, source })?,
        (None, None) => return Ok(None),
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(setting, "the token is empty"));
    }
    Ok(Some(Token::new(text.to_owned())))
}

/// Reads every trusted public key file; an unreadable or malformed one stops the start, since
/// silently trusting fewer keys could refuse every manifest (or, with none left, accept any).
pub(super) fn read_trusted_keys(
    paths: Option<Vec<PathBuf>>,
) -> Result<Vec<PublicKey>, ConfigError> {
    const SETTING: &str = "FLEETLET_TRUSTED_KEYS";
    let mut keys = Vec::new();
    for path in paths.unwrap_or_default() {
        if path.as_os_str().is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(SETTING, format!("cannot read {}: {e}", path.display())))?;
        let key = PublicKey::from_file_text(&text)
            .map_err(|e| invalid(SETTING, format!("{}: {e}", path.display())))?;
        keys.push(key);
    }
    Ok(keys)
}

/// Where unit files go unless configured: the directory an administrator's own units live in,
/// for the system manager or for the user the agent runs as.
pub(super) fn default_unit_dir(scope: SystemdScope) -> PathBuf {
    match scope {
        SystemdScope::User => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|dir| Path::new(dir).is_absolute())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))
            .map_or_else(
                || PathBuf::from("/etc/systemd/user"),
                |config| config.join("systemd/user"),
            ),
        SystemdScope::System | SystemdScope::None => PathBuf::from("/etc/systemd/system"),
    }
}

/// The allowed device list: absolute, normalised paths (matched exactly against a manifest's
/// `devices`), without ':' or ',', which the runtimes read as separators in `--device`.
pub(super) fn allowed_devices(paths: Option<Vec<PathBuf>>) -> Result<Vec<AbsPath>, ConfigError> {
    let mut devices = Vec::new();
    for path in paths.unwrap_or_default() {
        let text = path.to_str().ok_or_else(|| {
            invalid(
                "FLEETLET_ALLOWED_DEVICES",
                format!("{} is not valid UTF-8", path.display()),
            )
        })?;
        if text.contains([':', ',']) {
            return Err(invalid(
                "FLEETLET_ALLOWED_DEVICES",
                format!("{text} must not contain ':' or ','"),
            ));
        }
        let device = AbsPath::try_from(text)
            .map_err(|e| invalid("FLEETLET_ALLOWED_DEVICES", format!("{text}: {}", e.0)))?;
        if !devices.contains(&device) {
            devices.push(device);
        }
    }
    Ok(devices)
}

/// The metrics file must be named `*.prom`: node_exporter's textfile collector reads nothing
/// else, so any other name would be a setting that silently does nothing.
pub(super) fn metrics_file(path: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
    const SETTING: &str = "FLEETLET_METRICS_FILE";
    let Some(path) = path.filter(|path| !path.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let named_prom = path
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.len() > ".prom".len() && name.ends_with(".prom"));
    if !named_prom {
        return Err(invalid(
            SETTING,
            format!(
                "{} must be a file named *.prom (node_exporter's textfile collector reads only those)",
                path.display()
            ),
        ));
    }
    Ok(Some(path))
}

pub(super) fn canonical_or_given(root: &Path) -> PathBuf {
    std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf())
}
