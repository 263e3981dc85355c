//! Tests of the manager configuration: durations, the store choice, and Debug without secrets.

use super::*;

#[test]
fn durations_parse_with_their_units() {
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("3d").is_err());
}

#[test]
fn without_database_url_or_dev_the_store_choice_fails() {
    let config = Config::parse_from(["fleetlet-manager"]);
    let config = Config {
        database_url: None,
        ..config
    };
    assert!(matches!(
        config.store_choice(),
        Err(ConfigError::MissingDatabaseUrl)
    ));
    let dev = Config {
        dev: true,
        ..config
    };
    assert!(matches!(dev.store_choice(), Ok(StoreChoice::Memory)));
}

#[test]
fn debug_output_shows_no_secret() {
    let config = Config::parse_from([
        "fleetlet-manager",
        "--database-url",
        "postgres://u:topsecret@h/db",
        "--admin-token",
        "admintoken",
    ]);
    let shown = format!("{config:?}");
    assert!(!shown.contains("topsecret") && !shown.contains("admintoken"));
}
