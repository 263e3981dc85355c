//! Tests of the status wire types: typed details by kind, unknown reasons kept, free text refused.

use super::*;
use serde_json::json;

#[test]
fn details_deserialize_into_the_shape_of_their_kind() {
    let raw = json!({"kind": "SystemdUnit", "phase": "Ready", "since": "2026-11-22T10:00:00Z", "generation": 3,
        "details": {"activeState": "active", "subState": "running", "mainPid": 42, "nRestarts": 0, "enabled": true}});
    let status: ResourceStatus = serde_json::from_value(raw.clone()).expect("valid status");
    assert!(matches!(
        status.details,
        Some(ResourceDetails::SystemdUnit(_))
    ));
    assert_eq!(serde_json::to_value(&status).expect("serializes"), raw);
}

#[test]
fn unknown_reasons_are_kept_but_free_text_is_refused() {
    let known: ResourceError =
        serde_json::from_value(json!({"reason": "ImageNotFound", "message": "m"})).expect("ok");
    assert_eq!(known.reason, ErrorReason::ImageNotFound);
    let newer: ResourceError =
        serde_json::from_value(json!({"reason": "GpuMissing", "message": "m"})).expect("ok");
    assert_eq!(newer.reason, ErrorReason::Other("GpuMissing".into()));
    assert!(
        serde_json::from_value::<ResourceError>(json!({"reason": "it broke", "message": "m"}))
            .is_err()
    );
}
