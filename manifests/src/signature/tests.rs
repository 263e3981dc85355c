//! Tests of manifest signatures: trusted keys verify, changed or foreign manifests and rollouts do not.

use super::*;
use crate::ids::parse_key_id;
use crate::manifest::OnFailure;

fn manifest(agent: &str, text: &str) -> AgentManifest {
    AgentManifest::from_value(serde_json::json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": agent,
        "resources": [
            {"id": "motd", "kind": "File", "spec": {"path": "/etc/motd", "content": {"text": text}}},
            {"id": "gadget", "kind": "Gadget", "spec": {"zeta": 1, "alpha": {"b": 2, "a": 1}}}
        ]
    }))
    .expect("valid manifest")
}

fn key(byte: u8) -> SecretKey {
    SecretKey::from_seed([byte; 32])
}

fn signed(agent: &str, text: &str, key: &SecretKey) -> AgentManifest {
    let mut manifest = manifest(agent, text);
    manifest.signature = Some(key.sign(&manifest));
    manifest
}

#[test]
fn a_manifest_signed_by_a_trusted_key_verifies() {
    let key = key(1);
    let manifest = signed("pi-1", "hello\n", &key);
    assert_eq!(verify(&manifest, &[key.public()]), Ok(()));
}

#[test]
fn changed_resources_no_longer_verify() {
    let key = key(1);
    let evil = manifest("pi-1", "evil\n");
    let mut tampered = signed("pi-1", "hello\n", &key);
    tampered.resources = evil.resources;
    assert_eq!(
        verify(&tampered, &[key.public()]),
        Err(SignatureError::Mismatch {
            key_id: key.public().key_id()
        })
    );
}

#[test]
fn a_manifest_signed_for_another_agent_does_not_verify() {
    let key = key(1);
    let mut manifest = signed("pi-1", "hello\n", &key);
    manifest.agent_id = AgentId::try_from("pi-2").expect("valid id");
    assert!(matches!(
        verify(&manifest, &[key.public()]),
        Err(SignatureError::Mismatch { .. })
    ));
}

#[test]
fn unsigned_and_untrusted_signatures_are_refused() {
    let trusted = key(1);
    let unsigned = manifest("pi-1", "hello\n");
    assert_eq!(
        verify(&unsigned, &[trusted.public()]),
        Err(SignatureError::Unsigned)
    );
    let other = key(2);
    let by_other = signed("pi-1", "hello\n", &other);
    assert_eq!(
        verify(&by_other, &[trusted.public()]),
        Err(SignatureError::UnknownKey {
            key_id: other.public().key_id()
        })
    );
}

#[test]
fn either_of_two_trusted_keys_verifies_during_a_rotation() {
    let (old, new) = (key(1), key(2));
    let trusted = [old.public(), new.public()];
    assert_eq!(verify(&signed("pi-1", "a", &old), &trusted), Ok(()));
    assert_eq!(verify(&signed("pi-1", "a", &new), &trusted), Ok(()));
}

#[test]
fn the_signature_survives_a_round_trip_through_json_and_jsonb_key_order() {
    let key = key(3);
    let manifest = signed("pi-1", "hello\n", &key);
    let text = serde_json::to_string(&manifest).expect("serializes");
    let back = AgentManifest::from_slice(text.as_bytes()).expect("parses");
    assert_eq!(back, manifest);
    assert_eq!(verify(&back, &[key.public()]), Ok(()));
    // The payload sorts keys, so the unknown kind's spec is canonical whatever its order.
    let payload =
        String::from_utf8(signed_payload(&manifest.agent_id, &manifest.resources)).expect("utf-8");
    assert!(
        payload.starts_with("fleetlet-manifest-v1\npi-1\n["),
        "{payload}"
    );
    assert!(
        payload.contains(r#""spec":{"alpha":{"a":1,"b":2},"zeta":1}"#),
        "{payload}"
    );
}

fn with_rollout(mut manifest: AgentManifest, on_failure: OnFailure) -> AgentManifest {
    manifest.rollout = Some(RolloutPolicy {
        progress_deadline_seconds: 60,
        on_failure,
    });
    manifest
}

#[test]
fn without_a_rollout_the_signed_bytes_are_the_same_as_before_policies_existed() {
    let manifest = manifest("pi-1", "hello\n");
    assert_eq!(
        manifest_payload(&manifest),
        signed_payload(&manifest.agent_id, &manifest.resources)
    );
}

#[test]
fn a_signed_rollout_verifies_and_is_in_the_signed_bytes() {
    let key = key(5);
    let mut manifest = with_rollout(manifest("pi-1", "hello\n"), OnFailure::Hold);
    manifest.signature = Some(key.sign(&manifest));
    assert_eq!(verify(&manifest, &[key.public()]), Ok(()));
    let payload = String::from_utf8(manifest_payload(&manifest)).expect("utf-8");
    assert!(
        payload.ends_with("]\n{\"onFailure\":\"Hold\",\"progressDeadlineSeconds\":60}"),
        "{payload}"
    );
}

#[test]
fn a_stripped_rollout_no_longer_verifies() {
    let key = key(5);
    let mut manifest = with_rollout(manifest("pi-1", "hello\n"), OnFailure::Rollback);
    manifest.signature = Some(key.sign(&manifest));
    manifest.rollout = None;
    assert!(matches!(
        verify(&manifest, &[key.public()]),
        Err(SignatureError::Mismatch { .. })
    ));
}

#[test]
fn an_altered_or_added_rollout_no_longer_verifies() {
    let key = key(5);
    let mut altered = with_rollout(manifest("pi-1", "hello\n"), OnFailure::Rollback);
    altered.signature = Some(key.sign(&altered));
    altered.rollout = Some(RolloutPolicy {
        progress_deadline_seconds: 60,
        on_failure: OnFailure::Hold,
    });
    assert!(matches!(
        verify(&altered, &[key.public()]),
        Err(SignatureError::Mismatch { .. })
    ));
    let mut added = signed("pi-1", "hello\n", &key);
    added = with_rollout(added, OnFailure::Rollback);
    assert!(matches!(
        verify(&added, &[key.public()]),
        Err(SignatureError::Mismatch { .. })
    ));
}

#[test]
fn key_files_round_trip_and_key_ids_are_sixteen_hex_characters() {
    let secret = key(4);
    let again = SecretKey::from_file_text(&secret.to_file_text()).expect("reads");
    assert_eq!(again.public(), secret.public());
    let public = PublicKey::from_file_text(&secret.public().to_file_text()).expect("reads");
    assert_eq!(public, secret.public());
    let id = public.key_id();
    assert_eq!(parse_key_id(&id), Ok(id.clone()));
    assert_eq!(
        PublicKey::from_file_text("not base64"),
        Err(KeyError::Public)
    );
    assert!(format!("{again:?}").contains(&id));
}

#[test]
fn every_signature_violation_is_reported_with_its_path() {
    let violations = AgentManifest::from_value(serde_json::json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "AgentManifest", "agentId": "pi-1",
        "signature": {"keyId": "XYZ", "ed25519": "bm90IDY0IGJ5dGVz", "extra": 1}
    }))
    .expect_err("invalid signature");
    let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "signature.extra: unknown field",
            "signature.keyId: must be 16 lower-case hex characters",
            "signature.ed25519: must be the base64 of a 64-byte ed25519 signature",
        ]
    );
}

#[test]
fn wire_fields_are_checked() {
    assert_eq!(
        ManifestSignature::from_parts("ABCDEF0123456789", &STANDARD.encode([0u8; 64])),
        Err(SignatureFieldError::KeyId)
    );
    assert_eq!(
        ManifestSignature::from_parts("abcdef0123456789", &STANDARD.encode([0u8; 63])),
        Err(SignatureFieldError::Ed25519)
    );
}

/// A signed fleet of two parameters, and its manifest for `pi-1` as the agent receives it
/// (serialized and parsed again).
fn fleet_rendered(key: &SecretKey, greeting: &str) -> AgentManifest {
    let mut fleet = crate::fleet::Fleet::from_value(serde_json::json!({
        "apiVersion": "fleetlet.dev/v1", "kind": "Fleet", "name": "kiosks",
        "selector": {"matchLabels": {"role": "kiosk"}},
        "parameters": {
            "greeting": {"pattern": "[A-Za-z ]{1,20}"},
            "tag": {"pattern": "[0-9]+\\.[0-9]+", "default": "1.4"}
        },
        "template": {"resources": [
            {"id": "motd", "kind": "File",
             "spec": {"path": "/etc/motd", "content": {"text": "{{ greeting }} from {{ agentId }}\n"}}},
            {"id": "web", "kind": "Container", "spec": {"image": "localhost/kiosk:{{ tag }}"}}
        ]}
    }))
    .expect("valid fleet");
    fleet.signature = Some(key.sign_fleet(&fleet));
    let labels = [("greeting".to_owned(), greeting.to_owned())].into();
    let agent = AgentId::try_from("pi-1").expect("valid id");
    let manifest = crate::fleet::render(&fleet, 3, &agent, &labels).expect("renders");
    let wire = serde_json::to_value(&manifest).expect("serializes");
    AgentManifest::from_value(wire).expect("what the agent parses")
}

fn origin(manifest: &mut AgentManifest) -> &mut crate::fleet::FleetOrigin {
    manifest.fleet.as_mut().expect("fleet provenance")
}

#[test]
fn a_manifest_rendered_from_a_signed_fleet_verifies_without_its_own_signature() {
    let key = key(1);
    let manifest = fleet_rendered(&key, "Hello");
    assert!(manifest.signature.is_none());
    assert_eq!(verify(&manifest, &[key.public()]), Ok(()));
    assert_eq!(
        verify(&manifest, &[self::key(2).public()]),
        Err(SignatureError::UnknownKey {
            key_id: key.public().key_id()
        })
    );
}

#[test]
fn a_value_outside_its_signed_pattern_is_refused_even_when_the_resources_match_it() {
    let key = key(1);
    // What a manager that was broken into would send: resources rendered with a value the
    // pattern refuses, and that value.
    let evil = fleet_rendered(&key, "Hello");
    let mut manifest = evil.clone();
    let name = crate::fleet::ParameterName::try_from("greeting").expect("valid");
    origin(&mut manifest)
        .values
        .insert(name.clone(), "x; rm -rf /".into());
    let error = verify(&manifest, &[key.public()]).expect_err("refused");
    assert_eq!(
        error,
        SignatureError::FleetValueOutsidePattern {
            name: "greeting".into()
        }
    );
    assert_eq!(error.reason(), "FleetValueOutsidePattern");
    // A value removed, or one the template does not declare, is refused the same way.
    let mut missing = evil.clone();
    origin(&mut missing).values.remove(&name);
    assert!(matches!(
        verify(&missing, &[key.public()]),
        Err(SignatureError::FleetValueOutsidePattern { .. })
    ));
    let mut extra = evil;
    origin(&mut extra).values.insert(
        crate::fleet::ParameterName::try_from("other").expect("valid"),
        "1".into(),
    );
    assert!(matches!(
        verify(&extra, &[key.public()]),
        Err(SignatureError::FleetValueOutsidePattern { .. })
    ));
}

#[test]
fn an_altered_template_or_altered_values_or_resources_are_refused() {
    let key = key(1);
    let good = fleet_rendered(&key, "Hello");

    // The carried template altered (and the resources rendered from it): the signature breaks.
    let mut altered = good.clone();
    let signed = origin(&mut altered).signed.as_mut().expect("signed");
    signed.template.resources[0].spec["path"] = serde_json::json!("/etc/shadow");
    let error = verify(&altered, &[key.public()]).expect_err("refused");
    assert!(matches!(
        error,
        SignatureError::FleetSignatureMismatch { .. }
    ));
    assert_eq!(error.reason(), "FleetSignatureInvalid");

    // The resources changed under an intact signed template.
    let mut resources = good.clone();
    resources.resources = manifest("pi-1", "evil\n").resources;
    let error = verify(&resources, &[key.public()]).expect_err("refused");
    assert_eq!(error, SignatureError::FleetTemplateMismatch);
    assert_eq!(error.reason(), "FleetTemplateMismatch");

    // A value changed within its pattern without re-rendering: the resources no longer match.
    let mut values = good.clone();
    origin(&mut values).values.insert(
        crate::fleet::ParameterName::try_from("greeting").expect("valid"),
        "Bye".into(),
    );
    assert_eq!(
        verify(&values, &[key.public()]),
        Err(SignatureError::FleetTemplateMismatch)
    );

    // A rollout policy the template does not have.
    let mut rollout = good.clone();
    rollout.rollout = Some(RolloutPolicy {
        progress_deadline_seconds: 5,
        on_failure: OnFailure::Hold,
    });
    assert_eq!(
        verify(&rollout, &[key.public()]),
        Err(SignatureError::FleetTemplateMismatch)
    );

    // Without the signed part the manifest is simply unsigned.
    let mut stripped = good;
    origin(&mut stripped).signed = None;
    assert_eq!(
        verify(&stripped, &[key.public()]),
        Err(SignatureError::Unsigned)
    );
}

#[test]
fn a_fleet_signature_is_never_a_manifest_signature() {
    let key = key(1);
    let rendered = fleet_rendered(&key, "Hello");
    let mut manifest = rendered.clone();
    let signed = rendered
        .fleet
        .and_then(|f| f.into_inner().signed)
        .expect("signed");
    manifest.signature = Some(signed.signature);
    assert!(matches!(
        verify(&manifest, &[key.public()]),
        Err(SignatureError::Mismatch { .. })
    ));
    assert!(
        fleet_payload(
            &crate::fleet::FleetName::try_from("kiosks").expect("valid"),
            &signed.template,
            &signed.parameters
        )
        .starts_with(FLEET_PAYLOAD_CONTEXT.as_bytes())
    );
}
