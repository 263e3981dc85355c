//! `{{ name }}` placeholders in the string values of template specs: finding them and replacing
//! them with values.
//!
//! A placeholder is `{{`, optional spaces, a parameter name (an ASCII letter, then letters,
//! digits and `._/-`), optional spaces and `}}`. A `{{` that is not followed (after spaces) by a
//! letter is ordinary text, so `{{.Name}}` or `{{ 1 }}` stay as written; a `{{` followed by a
//! letter must complete a placeholder, so that a typo such as `{{ tag }` is refused rather than
//! delivered to devices. Replacement is literal and happens once: a value is never scanned for
//! placeholders itself, and it is put into the JSON string as text, never parsed as JSON.

use serde_json::Value;

/// One placeholder found in a string: the parameter it names and where it is (byte offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub name: String,
    pub start: usize,
    pub end: usize,
}

/// A `{{` followed by a name that does not end in `}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the placeholder at character {at} must be written {{{{ name }}}}")]
pub struct PlaceholderError {
    /// Offset in characters of the `{{` that starts it.
    pub at: usize,
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-')
}

/// Every placeholder of `text`, in order.
pub fn placeholders(text: &str) -> Result<Vec<Placeholder>, PlaceholderError> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(offset) = text[i..].find("{{") {
        let start = i + offset;
        let mut j = start + 2;
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        if !bytes.get(j).is_some_and(u8::is_ascii_alphabetic) {
            i = start + 1;
            continue;
        }
        let name_start = j;
        while bytes.get(j).copied().is_some_and(is_name_char) {
            j += 1;
        }
        let name_end = j;
        while bytes.get(j) == Some(&b' ') {
            j += 1;
        }
        if !text[j..].starts_with("}}") {
            return Err(PlaceholderError {
                at: text[..start].chars().count(),
            });
        }
        found.push(Placeholder {
            name: text[name_start..name_end].to_owned(),
            start,
            end: j + 2,
        });
        i = j + 2;
    }
    Ok(found)
}

/// `text` with every placeholder replaced by `lookup(name)`; `Err(name)` for the first name
/// `lookup` does not know (then nothing is returned, never a half-replaced text).
pub(crate) fn substitute<'v>(
    text: &str,
    lookup: &impl Fn(&str) -> Option<&'v str>,
) -> Result<String, SubstituteError> {
    let found = placeholders(text).map_err(SubstituteError::Malformed)?;
    if found.is_empty() {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for placeholder in found {
        let Some(value) = lookup(&placeholder.name) else {
            return Err(SubstituteError::Unknown(placeholder.name));
        };
        out.push_str(&text[last..placeholder.start]);
        out.push_str(value);
        last = placeholder.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// Why a text could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubstituteError {
    Malformed(PlaceholderError),
    Unknown(String),
}

/// A copy of `value` with the placeholders of every string value replaced (object keys are
/// copied as they are). `Err` with the first failure; no partial copy is returned.
pub(crate) fn substitute_value<'v>(
    value: &Value,
    lookup: &impl Fn(&str) -> Option<&'v str>,
) -> Result<Value, SubstituteError> {
    Ok(match value {
        Value::String(text) => Value::String(substitute(text, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute_value(item, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), substitute_value(item, lookup)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Calls `visit(path, text, is_key)` for every string value and every object key beneath
/// `value`, with paths written like the manifest validation's (`a.b[2]["odd key"]`).
pub(crate) fn visit_strings(value: &Value, path: &str, visit: &mut impl FnMut(&str, &str, bool)) {
    match value {
        Value::String(text) => visit(path, text, false),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                visit_strings(item, &format!("{path}[{index}]"), visit);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let child = crate::validate::child_path(path, key);
                visit(&child, key, true);
                visit_strings(item, &child, visit);
            }
        }
        _ => {}
    }
}
