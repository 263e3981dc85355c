//! Opaque page cursors: the position to continue from, tagged with the list it belongs to.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::error::HttpError;

/// Encodes a position of the list `tag` (e.g. `a` for agents) as an opaque cursor.
pub fn encode(tag: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tag}:{position}"))
}

/// Decodes a cursor of the list `tag`; anything else is a 400.
pub fn decode(tag: &str, cursor: &str) -> Result<String, HttpError> {
    let bad = || HttpError::bad_request("invalid cursor");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (found_tag, position) = text.split_once(':').ok_or_else(bad)?;
    if found_tag != tag {
        return Err(bad());
    }
    Ok(position.to_owned())
}

/// Cuts `rows`, read with one row more than `limit`, to the page, and returns where the next page
/// starts: `position` of the page's last row, or `None` when this is the last page.
pub fn page<T>(
    rows: &mut Vec<T>,
    limit: usize,
    position: impl FnOnce(&T) -> String,
) -> Option<String> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    if more {
        rows.last().map(position)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
