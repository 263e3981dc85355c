//! Tests of the validated newtypes: identifiers, paths, unit names, modes and image refs.

use super::*;

#[test]
fn identifiers_follow_the_documented_rule() {
    assert!(ResourceId::try_from("motd").is_ok());
    assert!(ResourceId::try_from("0web_1.a-b").is_ok());
    assert!(ResourceId::try_from("").is_err());
    assert!(ResourceId::try_from("-web").is_err());
    assert!(ResourceId::try_from("Web").is_err());
    assert!(ResourceId::try_from("a/b").is_err());
    assert!(ResourceId::try_from("a".repeat(64).as_str()).is_err());
    assert!(AgentId::try_from("a".repeat(63).as_str()).is_ok());
}

#[test]
fn paths_must_be_absolute_and_normalised() {
    assert!(AbsPath::try_from("/etc/motd").is_ok());
    assert!(AbsPath::try_from("/").is_ok());
    for bad in [
        "etc/motd",
        "/etc/../motd",
        "/etc//motd",
        "/etc/",
        "/./etc",
        "/a\0b",
        "",
    ] {
        assert!(AbsPath::try_from(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn unit_names_need_a_known_suffix_and_safe_characters() {
    assert!(UnitName::try_from("kiosk.service").is_ok());
    assert!(UnitName::try_from("getty@tty1.service").is_ok());
    assert_eq!(
        UnitName::try_from("backup.timer").map(|u| u.unit_type().to_owned()),
        Ok("timer".into())
    );
    for bad in [
        "kiosk",
        "kiosk.scope",
        ".service",
        "a b.service",
        "../x.service",
        "-x.service",
        "a@b@c.service",
    ] {
        assert!(UnitName::try_from(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn modes_are_octal_strings() {
    assert_eq!(FileMode::try_from("0644").map(FileMode::bits), Ok(0o644));
    assert_eq!(FileMode::try_from("755").map(FileMode::bits), Ok(0o755));
    assert_eq!(
        FileMode::try_from("4755").map(|m| m.to_string()),
        Ok("4755".into())
    );
    for bad in ["", "0999", "rw-r--r--", "17777", "0x1ff"] {
        assert!(FileMode::try_from(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn image_refs_refuse_whitespace_and_options() {
    assert!(ImageRef::try_from("localhost/busybox:test").is_ok());
    assert!(ImageRef::try_from("registry.example/app@sha256:abcd").is_ok());
    for bad in ["", "a b", "--privileged", "img;rm"] {
        assert!(ImageRef::try_from(bad).is_err(), "{bad:?} was accepted");
    }
}
