//! Validated newtypes for the names and values that cross the wire, the manifest's `signature`
//! value among them (made and checked by `signature.rs`).
//!
//! Each type checks its rule once, in `TryFrom<&str>`, and deserializes through it, so a value of
//! one of these types is valid by construction wherever it appears.

use std::borrow::Borrow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize, Serializer};

/// Why a string was refused as one of the newtypes of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

fn invalid(message: impl Into<String>) -> InvalidValue {
    InvalidValue(message.into())
}

/// Checks the identifier rule shared by agent ids and resource ids:
/// 1 to 63 characters of `[a-z0-9-_.]`, starting with a letter or a digit.
fn check_identifier(value: &str) -> Result<(), InvalidValue> {
    if value.is_empty() || value.len() > 63 {
        return Err(invalid("must be 1 to 63 characters long"));
    }
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if !value.chars().all(valid_char) {
        return Err(invalid("may only contain a-z, 0-9, '-', '_' and '.'"));
    }
    let first = value.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(invalid("must start with a letter or a digit"));
    }
    Ok(())
}

/// Defines a string newtype whose rule is the function `$check`.
/// The rule of [`check_identifier`] as a JSON Schema pattern, so that schema-driven clients and
/// fuzzers (the OpenAPI document) generate the ids the manager accepts.
pub(crate) const IDENTIFIER_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";

/// Defines a string newtype whose rule is the function `$check`; with a `pattern`, its JSON
/// Schema states the rule too (otherwise it is only "a string"). A pattern never refuses what
/// `$check` accepts (`tests/tests/validators_schema.rs` compares the two on samples).
macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        string_newtype!($(#[$meta])* $name, $check, pattern = None);
    };
    ($(#[$meta:meta])* $name:ident, $check:path, pattern = $pattern:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidValue;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                $check(value)?;
                Ok(Self(value.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                $check(&value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let pattern: Option<&str> = $pattern;
                match pattern {
                    Some(pattern) => schemars::json_schema!({"type": "string", "pattern": pattern}),
                    None => schemars::json_schema!({"type": "string"}),
                }
            }
        }
    };
}

pub(crate) use string_newtype;

string_newtype!(
    /// The identity of a device: 1–63 characters of `[a-z0-9-_.]`, starting with a letter or digit.
    AgentId,
    check_identifier,
    pattern = Some(IDENTIFIER_PATTERN)
);

string_newtype!(
    /// The identity of a resource inside one manifest, with the same rule as [`AgentId`].
    ResourceId,
    check_identifier,
    pattern = Some(IDENTIFIER_PATTERN)
);

fn check_abs_path(value: &str) -> Result<(), InvalidValue> {
    if !value.starts_with('/') {
        return Err(invalid("must be absolute"));
    }
    if value.len() > 4096 {
        return Err(invalid("must be at most 4096 bytes"));
    }
    if value.contains('\0') {
        return Err(invalid("must not contain a NUL byte"));
    }
    if value.len() > 1 && value.ends_with('/') {
        return Err(invalid("must not end with '/'"));
    }
    if value.contains("//") {
        return Err(invalid("must not contain '//'"));
    }
    if value.split('/').any(|part| part == ".." || part == ".") {
        return Err(invalid("must be normalised (no '.' or '..' components)"));
    }
    Ok(())
}

string_newtype!(
    /// An absolute, normalised path: no `..` or `.` components, no `//`, no trailing `/`.
    AbsPath,
    check_abs_path,
    pattern = Some(r"^/$|^(/([^./\x00][^/\x00]*|\.[^./\x00][^/\x00]*|\.\.[^/\x00]+))+$")
);

impl AbsPath {
    pub fn as_path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

/// The unit types a SystemdUnit resource may declare.
pub const UNIT_SUFFIXES: [&str; 6] = [
    ".service", ".timer", ".socket", ".path", ".mount", ".target",
];

fn check_unit_name(value: &str) -> Result<(), InvalidValue> {
    let Some(suffix) = UNIT_SUFFIXES.iter().find(|s| value.ends_with(*s)) else {
        return Err(invalid(
            "must end in .service, .timer, .socket, .path, .mount or .target",
        ));
    };
    let stem = &value[..value.len() - suffix.len()];
    if stem.is_empty() || value.len() > 255 {
        return Err(invalid(
            "must have a name of 1 to 255 characters before its suffix",
        ));
    }
    let valid_char = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if !stem.chars().all(valid_char) {
        return Err(invalid("may only contain letters, digits and ':-_.\\@'"));
    }
    if stem.starts_with('.') || stem.starts_with('-') {
        return Err(invalid("must not start with '.' or '-'"));
    }
    if stem.matches('@').count() > 1 {
        return Err(invalid("may contain at most one '@'"));
    }
    Ok(())
}

string_newtype!(
    /// A systemd unit name with one of the supported suffixes, e.g. `kiosk.service`.
    UnitName,
    check_unit_name,
    // Without the length limit of 255.
    pattern = Some(
        r"^([A-Za-z0-9:_\\][A-Za-z0-9:_.\\-]*(@[A-Za-z0-9:_.\\-]*)?|@[A-Za-z0-9:_.\\-]*)\.(service|timer|socket|path|mount|target)$"
    )
);

impl UnitName {
    /// The suffix without its dot, e.g. `service`.
    pub fn unit_type(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or_default()
    }
}

fn check_image_ref(value: &str) -> Result<(), InvalidValue> {
    if value.is_empty() || value.len() > 255 {
        return Err(invalid("must be 1 to 255 characters long"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain whitespace"));
    }
    if value.starts_with('-') {
        return Err(invalid("must not start with '-'"));
    }
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "/:.-_@+".contains(c);
    if !value.chars().all(valid_char) {
        return Err(invalid("may only contain letters, digits and '/:.-_@+'"));
    }
    Ok(())
}

string_newtype!(
    /// A container image reference such as `localhost/busybox:test`.
    ImageRef,
    check_image_ref,
    pattern = Some(r"^[A-Za-z0-9/:._@+][A-Za-z0-9/:._@+-]{0,254}$")
);

fn check_session_id(value: &str) -> Result<(), InvalidValue> {
    if value.is_empty() || value.len() > 128 {
        return Err(invalid("must be 1 to 128 characters long"));
    }
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if !value.chars().all(valid_char) || value.starts_with('.') {
        return Err(invalid(
            "may only contain letters, digits, '-', '_' and '.', and must not start with '.'",
        ));
    }
    Ok(())
}

string_newtype!(
    /// The id of a storage session: 1–128 characters of `[A-Za-z0-9-_.]`, not starting with `.`.
    SessionId,
    check_session_id,
    pattern = Some(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
);

fn check_account_name(value: &str) -> Result<(), InvalidValue> {
    if value.is_empty() || value.len() > 32 {
        return Err(invalid("must be 1 to 32 characters long"));
    }
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if !value.chars().all(valid_char) || value.starts_with('-') {
        return Err(invalid("must be a user or group name or a numeric id"));
    }
    Ok(())
}

string_newtype!(
    /// A user or group: a name such as `www-data` or a numeric id such as `1000`.
    AccountName,
    check_account_name,
    pattern = Some(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$")
);

/// A permission mode, written on the wire as an octal string such as `"0644"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileMode(u32);

impl FileMode {
    pub const fn new(bits: u32) -> Option<Self> {
        if bits <= 0o7777 {
            Some(Self(bits))
        } else {
            None
        }
    }

    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl Default for FileMode {
    fn default() -> Self {
        Self(0o644)
    }
}

impl TryFrom<&str> for FileMode {
    type Error = InvalidValue;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        let bad = || invalid("must be an octal string such as \"0644\" (at most 07777)");
        if value.is_empty() || value.len() > 5 || !value.bytes().all(|b| (b'0'..=b'7').contains(&b))
        {
            return Err(bad());
        }
        let bits = u32::from_str_radix(value, 8).map_err(|_| bad())?;
        Self::new(bits).ok_or_else(bad)
    }
}

impl TryFrom<String> for FileMode {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::try_from(value.as_str())
    }
}

impl From<FileMode> for String {
    fn from(value: FileMode) -> String {
        value.to_string()
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl schemars::JsonSchema for FileMode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FileMode".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Up to 07777: four octal digits, with at most one leading zero more.
        schemars::json_schema!({"type": "string", "pattern": "^(0[0-7]{0,4}|[0-7]{1,4})$"})
    }
}

/// A key id is the hex of this many leading bytes of the public key's sha256.
pub const KEY_ID_BYTES: usize = 8;

/// The `signature` of a manifest: which key signed and the ed25519 signature of the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSignature {
    pub(crate) key_id: String,
    pub(crate) ed25519: [u8; 64],
}

impl ManifestSignature {
    /// A signature from its wire parts: `key_id` is 16 lower-case hex characters and `ed25519`
    /// the standard base64 of 64 bytes.
    pub fn from_parts(key_id: &str, ed25519: &str) -> Result<Self, SignatureFieldError> {
        let key_id = parse_key_id(key_id)?;
        let ed25519 = parse_signature_bytes(ed25519)?;
        Ok(Self { key_id, ed25519 })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

/// Why one field of a wire signature is invalid; the message is written after the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureFieldError {
    #[error("keyId: must be 16 lower-case hex characters")]
    KeyId,
    #[error("ed25519: must be the base64 of a 64-byte ed25519 signature")]
    Ed25519,
}

impl SignatureFieldError {
    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::KeyId => "keyId",
            Self::Ed25519 => "ed25519",
        }
    }

    /// The message without the field name.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::KeyId => "must be 16 lower-case hex characters",
            Self::Ed25519 => "must be the base64 of a 64-byte ed25519 signature",
        }
    }
}

pub(crate) fn parse_key_id(text: &str) -> Result<String, SignatureFieldError> {
    let valid = text.len() == KEY_ID_BYTES * 2
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(SignatureFieldError::KeyId)
    }
}

pub(crate) fn parse_signature_bytes(text: &str) -> Result<[u8; 64], SignatureFieldError> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .ok_or(SignatureFieldError::Ed25519)
}

impl Serialize for ManifestSignature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            key_id: &'a str,
            ed25519: String,
        }
        Wire {
            key_id: &self.key_id,
            ed25519: STANDARD.encode(self.ed25519),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ManifestSignature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Wire {
            key_id: String,
            ed25519: String,
        }
        let wire = Wire::deserialize(deserializer)?;
        Self::from_parts(&wire.key_id, &wire.ed25519).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
