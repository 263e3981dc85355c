//! Tests of the agents routes: a label filter no registration could match is a bad request.

use super::parse_label_filter;

#[test]
fn a_label_filter_that_no_registration_could_match_is_a_bad_request() {
    assert!(parse_label_filter(Some("site=lab,role=kiosk")).is_ok());
    // A NUL byte reached PostgreSQL and answered 500 (found by Schemathesis).
    for bad in ["a=b\0c", "a\0=b", "a b=c", "a=b\u{7}"] {
        assert!(parse_label_filter(Some(bad)).is_err(), "{bad:?}");
    }
}
