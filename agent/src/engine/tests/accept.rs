//! Accepting manifests: one for another agent is refused, and with trusted keys only a manifest
//! whose signature verifies is taken.

use super::*;

#[tokio::test]
async fn a_manifest_for_another_agent_is_rejected_and_the_last_one_kept() {
    let (mut engine, _fake) = engine(FakeReconciler::default(), EngineSettings::default());
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("motd", "File")])))
        .expect("accept");
    let mut foreign = manifest(2, &[]);
    foreign.agent_id = AgentId::try_from("someone-else").expect("id");
    engine
        .accept(DesiredUpdate::Manifest(foreign))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 1);
    let status = engine.build_status(&Connectivity::Online).expect("status");
    assert!(status.conditions.iter().any(|c| {
        c.type_ == fleetlet_manifests::ConditionType::ManifestRejected
            && c.status == fleetlet_manifests::ConditionStatus::True
    }));
}

#[tokio::test]
async fn with_trusted_keys_a_tampered_manifest_is_refused_and_the_signed_one_kept() {
    let key = SecretKey::from_seed([7; 32]);
    let (mut engine, _fake) = engine(FakeReconciler::default(), trusting(&[&key]));
    let good = signed(manifest(1, &[("motd", "File")]), &key);
    engine
        .accept(DesiredUpdate::Manifest(good.clone()))
        .expect("accept");
    assert_eq!(rejection(&engine), None);

    let mut tampered = manifest(2, &[("motd", "File"), ("evil", "File")]);
    tampered.signature = good.signature.clone();
    engine
        .accept(DesiredUpdate::Manifest(tampered))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 1);
    assert_eq!(engine.manifest(), Some(&good));
    let (reason, message) = rejection(&engine).expect("rejected");
    assert_eq!(reason, "SignatureInvalid");
    assert!(message.contains("generation 2"), "{message}");
}

#[tokio::test]
async fn with_trusted_keys_an_unsigned_manifest_is_refused() {
    let key = SecretKey::from_seed([7; 32]);
    let (mut engine, _fake) = engine(FakeReconciler::default(), trusting(&[&key]));
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("motd", "File")])))
        .expect("accept");
    assert_eq!(engine.manifest(), None);
    let (reason, message) = rejection(&engine).expect("rejected");
    assert_eq!(reason, "SignatureInvalid");
    assert!(message.contains("not signed"), "{message}");
}

#[tokio::test]
async fn without_trusted_keys_unsigned_manifests_are_accepted() {
    let (mut engine, _fake) = engine(FakeReconciler::default(), EngineSettings::default());
    engine
        .accept(DesiredUpdate::Manifest(manifest(1, &[("motd", "File")])))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 1);
    assert_eq!(rejection(&engine), None);
}

#[tokio::test]
async fn during_a_key_rotation_either_trusted_key_is_accepted() {
    let (old, new) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
    let (mut engine, _fake) = engine(FakeReconciler::default(), trusting(&[&old, &new]));
    engine
        .accept(DesiredUpdate::Manifest(signed(
            manifest(1, &[("a", "File")]),
            &old,
        )))
        .expect("accept");
    engine
        .accept(DesiredUpdate::Manifest(signed(
            manifest(2, &[("b", "File")]),
            &new,
        )))
        .expect("accept");
    assert_eq!(engine.manifest_generation(), 2);
    assert_eq!(rejection(&engine), None);
}
