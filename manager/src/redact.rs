//! Showing a database URL without its password, for logs and `/readyz`.

/// Replaces the password of a `postgres://user:password@host/db` URL with `***`.
///
/// Anything that does not look like a URL with credentials is returned with everything before the
/// last `@` hidden, so a malformed URL that still carries a secret cannot leak through here.
pub fn redact_database_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    // The authority ends at the first `/`, `?` or `#`; a password may itself contain `/`, so the
    // credentials are found by the last `@` before the path instead.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (credentials, host_and_path) = rest.split_at(at);
    let user = match credentials.split_once(':') {
        Some((user, _password)) => user,
        None => credentials,
    };
    let query_safe = strip_password_parameter(host_and_path);
    format!("{scheme}://{user}:***{query_safe}")
}

/// Hides a `password=` query parameter, which libpq-style URLs also accept.
fn strip_password_parameter(host_and_path: &str) -> String {
    let Some((base, query)) = host_and_path.split_once('?') else {
        return host_and_path.to_owned();
    };
    let parameters: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", parameters.join("&"))
}

#[cfg(test)]
mod tests;
