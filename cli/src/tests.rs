//! Unit tests of `cli/src/lib.rs`.

use super::*;

#[test]
fn labels_parse_as_key_value() {
    assert_eq!(
        parse_label("site=north"),
        Ok(("site".into(), "north".into()))
    );
    assert!(parse_label("site").is_err());
}

#[test]
fn timeouts_parse_with_a_unit_and_refuse_zero() {
    assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    for bad in ["0s", "soon", "3d", "", "-5s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn the_state_filter_is_spelled_as_the_api_spells_it() {
    for (text, expected) in [
        ("rolledBack", StateFilter::RolledBack),
        ("rolled-back", StateFilter::RolledBack),
        ("degraded", StateFilter::Degraded),
    ] {
        assert_eq!(
            <StateFilter as clap::ValueEnum>::from_str(text, false),
            Ok(expected),
            "{text}"
        );
    }
}

#[test]
fn the_command_line_definition_is_consistent() {
    <Cli as clap::CommandFactory>::command().debug_assert();
}
