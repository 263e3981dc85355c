//! Durations as settings spell them: whole numbers with a unit (`500ms`, `30s`, `2m`, `1h`). The
//! one parser behind every duration setting: the agent's ([`parse_compound`]) and the manager's
//! and the `fleetlet` CLI's ([`parse_positive`]). It lives in the wire crate because all three
//! depend on it.

use std::time::Duration;

/// Parses the agent's durations: one or more `<number><unit>` parts added up (`10s`, `500ms`,
/// `2m`, `1h`, `1m30s`); a unit is required and zero is allowed.
pub fn parse_compound(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 10s, 500ms, 2m or 1h");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        if number.is_empty() {
            return Err(bad());
        }
        let number: u64 = number.parse().map_err(|_| bad())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let part = scaled(number, &after[..unit_len]).ok_or_else(bad)?;
        total = total.saturating_add(part);
        rest = &after[unit_len..];
    }
    Ok(total)
}

/// Parses the manager's and the CLI's durations: one `<number><unit>` (`30s`, `500ms`, `5m`,
/// `1h`), where a bare number is seconds; zero is refused.
pub fn parse_positive(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = split_number(text);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 500ms"))?;
    let duration = match unit {
        "" => Duration::from_secs(value),
        unit => scaled(value, unit)
            .ok_or_else(|| format!("unknown unit {unit:?} in {text:?} (use ms, s, m or h)"))?,
    };
    if duration.is_zero() {
        return Err("the duration must be above zero".to_owned());
    }
    Ok(duration)
}

/// The leading ASCII digits of `text`, and what follows them.
fn split_number(text: &str) -> (&str, &str) {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(digits)
}

/// `number` of `unit` (`ms`, `s`, `m` or `h`); `None` for any other unit. Minutes and hours
/// saturate instead of overflowing.
fn scaled(number: u64, unit: &str) -> Option<Duration> {
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.saturating_mul(60))),
        "h" => Some(Duration::from_secs(number.saturating_mul(3600))),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
