//! Tests of database URL redaction: passwords hidden in every form, non-URLs hidden whole.

use super::*;

#[test]
fn password_is_replaced_by_stars() {
    assert_eq!(
        redact_database_url("postgres://fleetlet:s3cr3t@db.example:5432/fleetlet"),
        "postgres://fleetlet:***@db.example:5432/fleetlet"
    );
}

#[test]
fn url_without_password_still_shows_the_mask() {
    assert_eq!(
        redact_database_url("postgres://fleetlet@127.0.0.1/fleetlet"),
        "postgres://fleetlet:***@127.0.0.1/fleetlet"
    );
}

#[test]
fn password_with_at_and_slash_is_hidden_entirely() {
    let redacted = redact_database_url("postgresql://u:p@ss/w@rd@h:1/db");
    assert_eq!(redacted, "postgresql://u:***@h:1/db");
    assert!(!redacted.contains("ss/w"));
}

#[test]
fn password_query_parameter_is_hidden() {
    let redacted = redact_database_url("postgres://u@h/db?sslmode=disable&password=hunter2");
    assert_eq!(
        redacted,
        "postgres://u:***@h/db?sslmode=disable&password=***"
    );
}

#[test]
fn something_that_is_not_a_url_is_hidden() {
    assert_eq!(redact_database_url("host=h password=x"), "***");
}
