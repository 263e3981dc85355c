//! Unit tests of the two duration spellings, including what each refuses that the other takes.

use super::*;

#[test]
fn compound_durations_add_up_their_parts_and_need_a_unit() {
    assert_eq!(parse_compound("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_compound(" 500ms "), Ok(Duration::from_millis(500)));
    assert_eq!(parse_compound("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_compound("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_compound("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(
        parse_compound("1h1m1s1ms"),
        Ok(Duration::from_millis(3_661_001))
    );
    assert_eq!(parse_compound("0s"), Ok(Duration::ZERO));
    for bad in [
        "",
        "10",
        "s",
        "10x",
        "-1s",
        "1.5s",
        "1m30",
        "99999999999999999999s",
    ] {
        assert!(parse_compound(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn positive_durations_are_one_part_where_a_bare_number_is_seconds() {
    assert_eq!(parse_positive("120s"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_positive("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_positive("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_positive("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_positive("90"), Ok(Duration::from_secs(90)));
    for bad in ["0s", "0", "soon", "3d", "", "-5s", "1m30s"] {
        assert!(parse_positive(bad).is_err(), "{bad:?} was accepted");
    }
    assert_eq!(
        parse_positive("3d"),
        Err("unknown unit \"d\" in \"3d\" (use ms, s, m or h)".to_owned())
    );
    assert_eq!(
        parse_positive("0s"),
        Err("the duration must be above zero".to_owned())
    );
}
