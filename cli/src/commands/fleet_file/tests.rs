//! Unit tests of `cli/src/commands/fleet_file.rs`.

use super::*;

const KIOSKS_YAML: &str = r#"
apiVersion: fleetlet.dev/v1
kind: Fleet
name: kiosks
selector:
  matchLabels: {role: kiosk}
parameters:
  greeting: {pattern: "^[A-Za-z !]{1,40}$", default: "hello"}
template:
  resources:
    - id: motd
      kind: File
      spec: {path: /etc/motd, content: {text: "{{ greeting }} from {{ agentId }}\n"}, mode: "0644"}
rolloutStrategy:
  batches: [{limit: 1}, {limit: "50%"}, {}]
  successThreshold: "100%"
"#;

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("fleet.yaml");
    std::fs::write(&path, text).expect("writes the fleet");
    (dir, path)
}

#[test]
fn a_yaml_fleet_is_read_and_sent_as_json() {
    let (_dir, path) = write(KIOSKS_YAML);
    let body = put_body(&path, None).expect("a valid fleet");
    assert_eq!(body.name, "kiosks");
    assert_eq!(body.json["selector"]["matchLabels"]["role"], "kiosk");
    assert!(body.json.get("signature").is_none());
}

#[test]
fn every_problem_is_reported_with_its_json_path_before_sending() {
    let broken = KIOSKS_YAML
        .replace("{{ greeting }}", "{{ nope }}")
        .replace("\"100%\"", "\"150%\"");
    let (_dir, path) = write(&broken);
    let error = match put_body(&path, None) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("an unknown placeholder was accepted"),
    };
    assert!(error.contains("is not a valid fleet"), "{error}");
    assert!(
        error.contains("template.resources[0].spec.content.text"),
        "{error}"
    );
    assert!(
        error.contains("rolloutStrategy.successThreshold"),
        "{error}"
    );
}

#[test]
fn a_signed_fleet_carries_a_signature_over_what_the_operator_wrote() {
    use fleetlet_manifests::signature::SecretKey;
    let (dir, path) = write(KIOSKS_YAML);
    let key = SecretKey::from_seed([7; 32]);
    let key_path = dir.path().join("signing.key");
    std::fs::write(&key_path, key.to_file_text()).expect("writes the key");
    let body = put_body(&path, Some(&key_path)).expect("a signed fleet");
    let fleet = Fleet::from_value(body.json).expect("the body is a valid fleet");
    assert_eq!(
        fleet.signature,
        Some(key.sign_fleet(&read_fleet(&path).expect("valid")))
    );
    assert_eq!(
        fleet.signature.map(|s| s.key_id().to_owned()),
        Some(key.public().key_id())
    );
}
