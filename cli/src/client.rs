//! The CLI's HTTP client and where its settings come from: flags, then `FLEETLET_URL` /
//! `FLEETLET_TOKEN` (clap reads both), then a TOML config file, then the default URL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetlet_manifests::api::{ErrorBody, Page};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use super::CliError;

/// Used when neither a flag, the environment nor the config file names a manager.
const DEFAULT_URL: &str = "http://127.0.0.1:7800";

/// Items asked for per page when reading a whole list.
const PAGE_LIMIT: usize = 500;

/// The config file: `url = "https://manager:7800"`, `token = "..."` or `token-file = "..."`, and
/// optionally `ca-file = "..."` (the CA of the manager's certificate).
/// A file beats an inline token in practice (it can be readable by its owner only), so both are
/// offered.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/fleetlet/config.toml`, else `$HOME/.config/fleetlet/config.toml`.
fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("fleetlet").join("config.toml"))
}

fn read_config(path: &Path) -> Result<ConfigFile, CliError> {
    let config_error = |message: String| CliError::Config {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
    toml::from_str(&text).map_err(|e| config_error(e.message().to_owned()))
}

/// Reads the CA certificate that the manager's certificate must chain to.
fn read_ca(path: &Path) -> Result<reqwest::Certificate, CliError> {
    let pem = std::fs::read(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    reqwest::Certificate::from_pem(&pem).map_err(|e| CliError::CaFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A thin client over the manager's API.
#[derive(Debug)]
pub(super) struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    /// Resolves URL and token: explicit values (flags or environment) win over the config file.
    /// A config file named explicitly must exist; the default one is optional.
    pub(super) fn from_settings(
        url: Option<String>,
        token: Option<String>,
        config: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, CliError> {
        let file = match config {
            Some(path) => read_config(&path)?,
            None => match default_config_path().filter(|path| path.exists()) {
                Some(path) => read_config(&path)?,
                None => ConfigFile::default(),
            },
        };
        let token = match (token, file.token, file.token_file) {
            (Some(token), _, _) | (None, Some(token), _) => token,
            (None, None, Some(path)) => std::fs::read_to_string(&path)
                .map_err(|source| CliError::Read { path, source })?
                .trim()
                .to_owned(),
            (None, None, None) => return Err(CliError::NoToken),
        };
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(path) = ca_file.or(file.ca_file) {
            // A private fleet CA replaces the public roots: a certificate some public CA issued
            // for the manager's name must not be enough.
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(read_ca(&path)?);
        }
        Ok(Self {
            http: http.build()?,
            url: url
                .or(file.url)
                .unwrap_or_else(|| DEFAULT_URL.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            token,
        })
    }

    /// Sends one request and decodes a JSON answer.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T, CliError> {
        let response = self.send(method, path, query, body).await?;
        Ok(response.json().await?)
    }

    /// Sends one request whose answer has no body worth reading (204).
    pub(super) async fn call_empty(&self, method: Method, path: &str) -> Result<(), CliError> {
        self.send(method, path, &[], None).await.map(drop)
    }

    /// Like [`Client::call`], but a 404 is `None` (e.g. an agent without any manifest yet).
    pub(super) async fn call_optional<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, CliError> {
        match self.call(Method::GET, path, &[], None).await {
            Ok(value) => Ok(Some(value)),
            Err(CliError::Api {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Every item of a cursor-paged list (`{"items": [...], "nextCursor": ...}`), page by page.
    pub(super) async fn all_pages<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<T>, CliError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut page_query = query.to_vec();
            page_query.push(("limit", PAGE_LIMIT.to_string()));
            page_query.extend(cursor.take().map(|c| ("cursor", c)));
            let page: Page<T> = self.call(Method::GET, path, &page_query, None).await?;
            items.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, CliError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .query(query)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // Every violation is printed with its JSON path, one per line.
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => {
                let mut message = body.error.message;
                for violation in body.error.violations {
                    message.push_str(&format!("\n  {violation}"));
                }
                message
            }
            Err(_) => "no error details".to_owned(),
        };
        Err(CliError::Api { status, message })
    }
}

/// A path segment (an agent id) made safe for a URL; ids are validated by the manager anyway,
/// but a typo must not turn into another route.
pub(super) fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests;
