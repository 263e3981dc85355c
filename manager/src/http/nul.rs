//! Bodies holding a NUL character, refused before they reach the database: PostgreSQL's `jsonb`
//! cannot store `\u0000`, so such a body would otherwise fail deep in the store as a 500.

use fleetlet_manifests::Violation;

use super::error::HttpError;

/// A 422 naming the JSON path of every string (keys too) in `body` that holds a NUL character;
/// `Ok` when there is none. `what` names the body in the error ("invalid manifest").
pub(super) fn refuse_nul(body: &serde_json::Value, what: &str) -> Result<(), HttpError> {
    let mut found = Vec::new();
    collect(body, "", &mut found);
    if found.is_empty() {
        Ok(())
    } else {
        Err(HttpError::invalid(what, found))
    }
}

fn collect(value: &serde_json::Value, path: &str, found: &mut Vec<Violation>) {
    let child = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::String(text) if text.contains('\0') => found.push(Violation {
            path: path.to_owned(),
            message: "must not contain a NUL character".into(),
        }),
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                collect(item, &format!("{path}[{index}]"), found);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                if key.contains('\0') {
                    found.push(Violation {
                        path: child(&key.replace('\0', "\\0")),
                        message: "a key must not contain a NUL character".into(),
                    });
                } else {
                    collect(item, &child(key), found);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;
