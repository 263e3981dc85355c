//! Every example manifest shipped in `manifests/examples/` is valid and round-trips unchanged.

use fleetlet_manifests::AgentManifest;

#[test]
fn every_example_manifest_is_valid_and_round_trips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("readable");
        let manifest = AgentManifest::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} is not valid: {e:?}", path.display()));
        let again = serde_json::to_vec(&manifest).expect("serializes");
        assert_eq!(
            AgentManifest::from_slice(&again),
            Ok(manifest),
            "{} does not round-trip",
            path.display()
        );
        checked += 1;
    }
    let rollout = std::fs::read(dir.join("rollout.json")).expect("the rollout example");
    let rollout = AgentManifest::from_slice(&rollout).expect("valid");
    assert!(
        rollout.rollout.is_some(),
        "rollout.json shows a rollout policy"
    );
    assert!(
        checked >= 2,
        "expected the example manifests, found {checked}"
    );
}
