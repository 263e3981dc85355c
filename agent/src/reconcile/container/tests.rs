//! Unit tests of the Container reconciler against the fake runtime: what it creates, restarts,
//! replaces and refuses, and what it reports.

use fleetlet_manifests::{AbsPath, Resource, ResourceSpec};
use serde_json::json;

use super::*;
use crate::reconcile::Previous;
use crate::runtime::ConfiguredRuntime;
use crate::runtime::fake::{Call, FakeRuntime};

const IMAGE: &str = "localhost/busybox:test";

fn agent() -> AgentId {
    AgentId::try_from("pi-1").expect("agent id")
}

fn reconciler(fake: FakeRuntime) -> ContainerReconciler<FakeRuntime> {
    ContainerReconciler::new(fake, Some(agent()))
}

fn resource(spec: serde_json::Value) -> Resource {
    serde_json::from_value(json!({"id": "web", "kind": "Container", "spec": spec}))
        .expect("valid resource")
}

fn resource_with_id(id: &str, spec: serde_json::Value) -> Resource {
    serde_json::from_value(json!({"id": id, "kind": "Container", "spec": spec}))
        .expect("valid resource")
}

fn web(extra: serde_json::Value) -> Resource {
    let mut spec = json!({"image": IMAGE, "command": ["sleep", "1000"]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    resource(spec)
}

/// Applies `resource` the way the engine does: with the record of the previous success.
async fn apply(
    reconciler: &ContainerReconciler<FakeRuntime>,
    resource: &Resource,
    previous: Option<&(String, OwnedContainer)>,
) -> Result<Applied, ContainerError> {
    let ResourceSpec::Container(spec) = &resource.spec else {
        panic!("not a container spec");
    };
    let spec_hash = resource.spec_hash();
    reconciler
        .apply(Target {
            id: &resource.id,
            spec,
            spec_hash: &spec_hash,
            previous: previous.map(|(hash, owned)| Previous {
                spec_hash: hash,
                owned,
            }),
        })
        .await
}

fn record(resource: &Resource, applied: &Applied) -> (String, OwnedContainer) {
    match &applied.owned {
        Owned::Container(owned) => (resource.spec_hash(), owned.clone()),
        other => panic!("not a container record: {other:?}"),
    }
}

fn container_details(applied: &Applied) -> ContainerDetails {
    match &applied.details {
        Some(ResourceDetails::Container(details)) => details.clone(),
        other => panic!("no container details: {other:?}"),
    }
}

/// A `web` container created and started by a first apply: the reconciler, the resource, the
/// container's id and the record of that apply (what the engine passes to the next one).
async fn created(
    extra: serde_json::Value,
) -> (
    ContainerReconciler<FakeRuntime>,
    Resource,
    String,
    (String, OwnedContainer),
) {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
    let resource = web(extra);
    let applied = apply(&reconciler, &resource, None).await.expect("apply");
    let id = container_details(&applied).container_id.expect("id");
    let previous = record(&resource, &applied);
    (reconciler, resource, id, previous)
}

/// Takes the runtime's calls since the last take and says whether one of them is `which`.
fn took_a_call(reconciler: &ContainerReconciler<FakeRuntime>, which: fn(&Call) -> bool) -> bool {
    reconciler.runtime().take_calls().iter().any(which)
}

fn ago(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::seconds(seconds)
}

#[tokio::test]
async fn creates_a_labelled_container_from_the_spec_and_starts_it() {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
    let resource = web(json!({"args": ["extra"], "env": {"MODE": "kiosk"},
        "memoryLimitBytes": 67108864, "cpuMillis": 250, "user": "nobody", "workingDir": "/tmp"}));
    let applied = apply(&reconciler, &resource, None).await.expect("apply");
    assert_eq!(applied.change, Change::Created);
    let details = container_details(&applied);
    assert_eq!(details.state, "running");
    assert_eq!(details.restarts, 0);
    let id = details.container_id.expect("container id");
    let request = reconciler.runtime().request(&id).expect("request");
    assert_eq!(request.name, "fleetlet-pi-1-web");
    assert_eq!(request.labels[LABEL_AGENT], "pi-1");
    assert_eq!(request.labels[LABEL_RESOURCE], "web");
    assert_eq!(request.labels[LABEL_SPEC_HASH], resource.spec_hash());
    assert_eq!(request.entrypoint.as_deref(), Some("sleep"));
    assert_eq!(request.arguments, ["1000", "extra"]);
    assert_eq!(request.env["MODE"], "kiosk");
    assert_eq!(request.memory_limit_bytes, Some(67108864));
    assert_eq!(request.cpu_millis, Some(250));
    assert_eq!(request.user.as_deref(), Some("nobody"));
    assert_eq!(request.working_dir.as_deref(), Some("/tmp"));
}

#[tokio::test]
async fn an_unchanged_spec_makes_no_call_beyond_observing() {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
    let resource = web(json!({}));
    let first = apply(&reconciler, &resource, None).await.expect("apply");
    reconciler.runtime().take_calls();
    let second = apply(&reconciler, &resource, Some(&record(&resource, &first)))
        .await
        .expect("apply");
    assert_eq!(second.change, Change::Unchanged);
    assert_eq!(reconciler.runtime().take_calls(), [Call::List]);
    // Without a record (an agent restarted on a memory store) the labels still identify
    // the container: kept, not restarted.
    let third = apply(&reconciler, &resource, None).await.expect("apply");
    assert_eq!(third.change, Change::Unchanged);
    assert_eq!(reconciler.runtime().take_calls(), [Call::List]);
    assert_eq!(
        container_details(&third).container_id,
        container_details(&first).container_id
    );
}

#[tokio::test]
async fn a_spec_change_removes_the_old_container_and_creates_a_new_one() {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
    let before = web(json!({"env": {"MODE": "a"}}));
    let first = apply(&reconciler, &before, None).await.expect("apply");
    let old_id = container_details(&first).container_id.expect("id");
    reconciler.runtime().take_calls();

    let after = web(json!({"env": {"MODE": "b"}}));
    let second = apply(&reconciler, &after, Some(&record(&before, &first)))
        .await
        .expect("apply");
    assert_eq!(second.change, Change::Updated);
    let new_id = container_details(&second).container_id.expect("id");
    assert_ne!(new_id, old_id);
    let calls = reconciler.runtime().take_calls();
    let removed = calls
        .iter()
        .position(|c| *c == Call::Remove(old_id.clone()));
    let created = calls.iter().position(|c| matches!(c, Call::Create(_)));
    assert!(
        removed.is_some() && removed < created,
        "old removed before the new one is created: {calls:?}"
    );
    assert!(reconciler.runtime().container(&old_id).is_none());
    assert_eq!(reconciler.runtime().containers().len(), 1);
}

#[tokio::test]
async fn an_exited_container_under_always_is_restarted_with_growing_delays() {
    let (reconciler, resource, id, mut previous) =
        created(json!({"restartPolicy": "Always"})).await;

    // First exit, long enough ago: restarted at once and counted.
    reconciler.runtime().exit(&id, 137, ago(5));
    reconciler.runtime().take_calls();
    let restarted = apply(&reconciler, &resource, Some(&previous))
        .await
        .expect("restart");
    assert!(matches!(restarted.change, Change::Repaired { .. }));
    assert!(
        reconciler
            .runtime()
            .take_calls()
            .contains(&Call::Start(id.clone()))
    );
    let details = container_details(&restarted);
    assert_eq!((details.restarts, details.state.as_str()), (1, "running"));
    assert_eq!(details.container_id.as_deref(), Some(id.as_str()));
    previous = record(&resource, &restarted);
    assert_eq!(previous.1.restarts, 1);

    // Second exit, just now: the second restart in a row waits 2 s after the exit, and the
    // failure tells the engine when to come back.
    reconciler.runtime().exit(&id, 137, ago(0));
    let waiting = apply(&reconciler, &resource, Some(&previous))
        .await
        .expect_err("backing off");
    assert_eq!(waiting.reason(), ErrorReason::CrashLoopBackOff);
    let wait = retry_after(&waiting).expect("a retry time");
    assert!(
        wait > Duration::from_secs(1) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    let Some(ResourceDetails::Container(details)) = waiting.details() else {
        panic!("details of the exited container");
    };
    assert_eq!((details.exit_code, details.restarts), (Some(137), 1));
    assert!(!took_a_call(&reconciler, |c| matches!(c, Call::Start(_))));

    // Once the delay has passed it is restarted; the next delay doubles.
    reconciler.runtime().exit(&id, 137, ago(3));
    let restarted = apply(&reconciler, &resource, Some(&previous))
        .await
        .expect("restart");
    previous = record(&resource, &restarted);
    assert_eq!((previous.1.restarts, previous.1.crash_streak), (2, 2));
    reconciler.runtime().exit(&id, 137, ago(3));
    let waiting = apply(&reconciler, &resource, Some(&previous))
        .await
        .expect_err("backing off");
    let wait = retry_after(&waiting).expect("a retry time");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "4 s after exit, 3 s passed: {wait:?}"
    );
}

#[tokio::test]
async fn a_container_that_ran_long_before_exiting_starts_a_fresh_streak() {
    let (reconciler, resource, id, (hash, mut owned)) = created(json!({})).await;
    owned.crash_streak = 8;
    owned.restarts = 8;
    let previous = (hash, owned);

    // Crashing again right after the eighth restart: the ninth waits 256 s.
    reconciler.runtime().set_started_at(&id, ago(1));
    reconciler.runtime().exit(&id, 1, ago(0));
    let waiting = apply(&reconciler, &resource, Some(&previous))
        .await
        .expect_err("backing off");
    assert!(retry_after(&waiting).expect("retry") > Duration::from_secs(200));

    // After a run longer than STABLE_RUN the streak starts over: 1 s.
    reconciler.runtime().set_started_at(&id, ago(1200));
    let waiting = apply(&reconciler, &resource, Some(&previous))
        .await
        .expect_err("backing off");
    assert!(retry_after(&waiting).expect("retry") <= Duration::from_secs(1));
}

#[tokio::test]
async fn under_never_an_exited_container_stays_down_and_reports_its_exit_code() {
    let (reconciler, resource, id, previous) = created(json!({"restartPolicy": "Never"})).await;
    reconciler.runtime().exit(&id, 137, ago(60));
    reconciler.runtime().take_calls();
    let error = apply(&reconciler, &resource, Some(&previous))
        .await
        .expect_err("exited");
    assert_eq!(error.reason(), ErrorReason::ContainerExited);
    let Some(ResourceDetails::Container(details)) = error.details() else {
        panic!("details");
    };
    assert_eq!(
        (details.exit_code, details.state.as_str()),
        (Some(137), "exited")
    );
    assert_eq!(reconciler.runtime().take_calls(), [Call::List]);

    // Under OnFailure a clean exit is completion, not a failure.
    let job = web(json!({"restartPolicy": "OnFailure"}));
    let reconciler = super::tests::reconciler(FakeRuntime::with_images(&[IMAGE]));
    let applied = apply(&reconciler, &job, None).await.expect("apply");
    let id = container_details(&applied).container_id.expect("id");
    reconciler.runtime().exit(&id, 0, ago(60));
    let done = apply(&reconciler, &job, Some(&record(&job, &applied)))
        .await
        .expect("completed");
    assert_eq!(container_details(&done).exit_code, Some(0));
}

#[tokio::test]
async fn a_foreign_container_holding_the_name_is_a_conflict_and_is_never_removed() {
    let fake = FakeRuntime::with_images(&[IMAGE]);
    // Same name, and even the agent label of another agent.
    let foreign = fake.plant(
        "fleetlet-pi-1-web",
        BTreeMap::from([(LABEL_AGENT.to_owned(), "someone-else".to_owned())]),
    );
    let reconciler = reconciler(fake);
    let resource = web(json!({}));
    let error = apply(&reconciler, &resource, None)
        .await
        .expect_err("conflict");
    assert_eq!(error.reason(), ErrorReason::Conflict);
    let owned = OwnedContainer {
        container_id: foreign.clone(),
        name: "fleetlet-pi-1-web".into(),
        restarts: 0,
        crash_streak: 0,
    };
    // Even a record naming it (a corrupted or forged record) does not get it removed.
    let deleted = reconciler
        .delete(&resource.id, &owned)
        .await
        .expect("delete");
    assert_eq!(deleted, Deleted::AlreadyGone);
    let calls = reconciler.runtime().take_calls();
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Remove(_))),
        "{calls:?}"
    );
    assert!(reconciler.runtime().container(&foreign).is_some());
}

#[tokio::test]
async fn delete_removes_only_the_labelled_container() {
    let fake = FakeRuntime::with_images(&[IMAGE]);
    let other = fake.plant("unrelated", BTreeMap::new());
    let reconciler = reconciler(fake);
    let resource = web(json!({}));
    let applied = apply(&reconciler, &resource, None).await.expect("apply");
    let (_, owned) = record(&resource, &applied);
    assert_eq!(
        reconciler
            .delete(&resource.id, &owned)
            .await
            .expect("delete"),
        Deleted::Removed
    );
    assert_eq!(
        reconciler
            .delete(&resource.id, &owned)
            .await
            .expect("delete"),
        Deleted::AlreadyGone
    );
    assert_eq!(reconciler.runtime().containers().len(), 1);
    assert!(reconciler.runtime().container(&other).is_some());
}

#[tokio::test]
async fn privileged_host_network_host_pid_and_devices_are_not_allowed() {
    for extra in [
        json!({"privileged": true}),
        json!({"hostNetwork": true}),
        json!({"hostPid": true}),
        json!({"devices": ["/dev/ttyUSB0"]}),
    ] {
        let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
        let error = apply(&reconciler, &web(extra.clone()), None)
            .await
            .expect_err("refused");
        assert_eq!(error.reason(), ErrorReason::NotAllowed, "{extra}");
        // Refused before the runtime was asked anything: nothing was created.
        assert!(reconciler.runtime().containers().is_empty(), "{extra}");
    }
    // Asking for none of it (the flags left false) is fine.
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
    apply(&reconciler, &web(json!({"privileged": false})), None)
        .await
        .expect("an ordinary container");
}

fn dev(path: &str) -> AbsPath {
    AbsPath::try_from(path).expect("absolute path")
}

#[tokio::test]
async fn a_refusal_names_what_was_asked_and_the_setting_that_allows_it() {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
    let error = apply(
        &reconciler,
        &web(
            json!({"privileged": true, "hostNetwork": true, "hostPid": true,
            "devices": ["/dev/ttyUSB0"]}),
        ),
        None,
    )
    .await
    .expect_err("refused");
    let message = error.to_string();
    for expected in [
        "privileged mode",
        "FLEETLET_ALLOW_PRIVILEGED",
        "the host network",
        "FLEETLET_ALLOW_HOST_NETWORK",
        "the host PID namespace",
        "FLEETLET_ALLOW_HOST_PID",
        "/dev/ttyUSB0",
        "FLEETLET_ALLOWED_DEVICES",
    ] {
        assert!(message.contains(expected), "{expected} in {message}");
    }
}

#[tokio::test]
async fn allowed_host_access_reaches_the_create_request() {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE])).with_host_access(HostAccess {
        privileged: true,
        host_network: true,
        host_pid: true,
        devices: vec![dev("/dev/ttyUSB0"), dev("/dev/i2c-1")],
    });
    let resource = web(
        json!({"privileged": true, "hostNetwork": true, "hostPid": true,
        "devices": ["/dev/ttyUSB0"]}),
    );
    let applied = apply(&reconciler, &resource, None).await.expect("allowed");
    let id = container_details(&applied).container_id.expect("id");
    let request = reconciler.runtime().request(&id).expect("request");
    assert!(request.privileged && request.host_network && request.host_pid);
    assert_eq!(request.devices, ["/dev/ttyUSB0"]);
    assert_eq!(request.labels[LABEL_SPEC_HASH], resource.spec_hash());

    // Allowing is not asking: an ordinary container gets none of it.
    let plain = resource_with_id("plain", json!({"image": IMAGE}));
    let applied = apply(&reconciler, &plain, None).await.expect("ordinary");
    let id = container_details(&applied).container_id.expect("id");
    let request = reconciler.runtime().request(&id).expect("request");
    assert!(!request.privileged && !request.host_network && !request.host_pid);
    assert!(request.devices.is_empty());
}

#[tokio::test]
async fn only_what_is_allowed_passes_and_a_device_off_the_list_is_refused() {
    // Privileged allowed, devices allowed: /dev/sda is not on the list.
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE])).with_host_access(HostAccess {
        privileged: true,
        devices: vec![dev("/dev/ttyUSB0")],
        ..HostAccess::default()
    });
    let error = apply(
        &reconciler,
        &web(json!({"privileged": true, "devices": ["/dev/ttyUSB0", "/dev/sda"]})),
        None,
    )
    .await
    .expect_err("refused");
    assert_eq!(error.reason(), ErrorReason::NotAllowed);
    let message = error.to_string();
    assert!(message.contains("/dev/sda"), "{message}");
    assert!(!message.contains("/dev/ttyUSB0"), "{message}");
    assert!(!message.contains("privileged"), "{message}");
    // Exact paths only: a path under an allowed one, or a link to it, is not allowed.
    let error = apply(
        &reconciler,
        &web(json!({"devices": ["/dev/ttyUSB0/x"]})),
        None,
    )
    .await
    .expect_err("refused");
    assert_eq!(error.reason(), ErrorReason::NotAllowed);
    // Host network was not allowed, whatever else was.
    let error = apply(&reconciler, &web(json!({"hostNetwork": true})), None)
        .await
        .expect_err("refused");
    assert!(
        error.to_string().contains("FLEETLET_ALLOW_HOST_NETWORK"),
        "{error}"
    );
    assert!(reconciler.runtime().containers().is_empty());
}

#[tokio::test]
async fn asking_for_host_access_changes_the_spec_hash_and_replaces_the_container() {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE])).with_host_access(HostAccess {
        host_network: true,
        ..HostAccess::default()
    });
    let before = web(json!({}));
    let after = web(json!({"hostNetwork": true}));
    assert_ne!(before.spec_hash(), after.spec_hash());
    let first = apply(&reconciler, &before, None).await.expect("apply");
    let second = apply(&reconciler, &after, Some(&record(&before, &first)))
        .await
        .expect("apply");
    assert_eq!(second.change, Change::Updated);
    let id = container_details(&second).container_id.expect("id");
    assert!(
        reconciler
            .runtime()
            .request(&id)
            .expect("request")
            .host_network
    );
    assert_eq!(reconciler.runtime().containers().len(), 1);
}

#[tokio::test]
async fn images_follow_the_pull_policy() {
    let reconciler = reconciler(FakeRuntime::with_images(&[]));
    let never = resource(json!({"image": "localhost/nope:1", "pullPolicy": "Never"}));
    let error = apply(&reconciler, &never, None).await.expect_err("missing");
    assert_eq!(error.reason(), ErrorReason::ImageNotFound);
    assert!(!took_a_call(&reconciler, |c| matches!(c, Call::Pull(_))));

    let if_missing = resource(json!({"image": "localhost/nope:1", "pullPolicy": "IfNotPresent"}));
    let error = apply(&reconciler, &if_missing, None)
        .await
        .expect_err("pull fails");
    assert_eq!(error.reason(), ErrorReason::ImagePullFailed);
    assert!(
        reconciler
            .runtime()
            .take_calls()
            .contains(&Call::Pull("localhost/nope:1".into()))
    );

    let present = FakeRuntime::with_images(&[IMAGE]);
    let reconciler = super::tests::reconciler(present);
    apply(
        &reconciler,
        &web(json!({"pullPolicy": "IfNotPresent"})),
        None,
    )
    .await
    .expect("present");
    assert!(!took_a_call(&reconciler, |c| matches!(c, Call::Pull(_))));
}

#[tokio::test]
async fn an_unreachable_runtime_fails_with_runtime_unavailable() {
    let fake = FakeRuntime::with_images(&[IMAGE]);
    fake.set_down(true);
    let reconciler = reconciler(fake);
    let error = apply(&reconciler, &web(json!({})), None)
        .await
        .expect_err("down");
    assert_eq!(error.reason(), ErrorReason::RuntimeUnavailable);

    let disabled = ContainerReconciler::new(ConfiguredRuntime::Disabled, Some(agent()));
    let resource = web(json!({}));
    let ResourceSpec::Container(spec) = &resource.spec else {
        panic!("container spec");
    };
    let error = disabled
        .apply(Target {
            id: &resource.id,
            spec,
            spec_hash: &resource.spec_hash(),
            previous: None,
        })
        .await
        .expect_err("disabled");
    assert_eq!(error.reason(), ErrorReason::RuntimeUnavailable);
}

#[tokio::test]
async fn volumes_wait_for_session_storage() {
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE]));
    let resource = web(json!({"volumes": [{"sessionStorage": "scratch", "mountPath": "/data"}]}));
    let error = apply(&reconciler, &resource, None)
        .await
        .expect_err("no storage");
    assert_eq!(error.reason(), ErrorReason::StorageNotReady);
    assert!(error.to_string().contains("not ready"), "{error}");
    assert!(reconciler.runtime().take_calls().is_empty());
}

fn scratch() -> ResourceId {
    ResourceId::try_from("scratch").expect("resource id")
}

/// Session storage `scratch` is ready, its data directory at `path`.
fn scratch_ready_at(volumes: &SessionVolumes, path: &str) {
    volumes.set(&scratch(), VolumeState::Ready { path: path.into() });
}

/// A reconciler whose session storage `scratch` is ready at `path`, and the volumes it reads.
fn with_scratch_at(path: &str) -> (SessionVolumes, ContainerReconciler<FakeRuntime>) {
    let volumes = SessionVolumes::default();
    let reconciler = reconciler(FakeRuntime::with_images(&[IMAGE])).with_volumes(volumes.clone());
    scratch_ready_at(&volumes, path);
    (volumes, reconciler)
}

#[tokio::test]
async fn a_ready_volume_is_bound_and_a_new_session_directory_replaces_the_container() {
    let (volumes, reconciler) = with_scratch_at("/sessions/scratch@s1/data");
    let resource = web(json!({"volumes": [
        {"sessionStorage": "scratch", "mountPath": "/data", "readOnly": true}]}));
    let first = apply(&reconciler, &resource, None).await.expect("apply");
    let first_id = container_details(&first).container_id.expect("id");
    let request = reconciler.runtime().request(&first_id).expect("request");
    assert_eq!(
        request.mounts,
        [BindMount {
            source: "/sessions/scratch@s1/data".into(),
            target: "/data".into(),
            read_only: true,
        }]
    );
    assert_ne!(request.labels[LABEL_SPEC_HASH], resource.spec_hash());

    let unchanged = apply(&reconciler, &resource, Some(&record(&resource, &first)))
        .await
        .expect("apply");
    assert_eq!(unchanged.change, Change::Unchanged);

    scratch_ready_at(&volumes, "/sessions/scratch@s2/data");
    let moved = apply(&reconciler, &resource, Some(&record(&resource, &first)))
        .await
        .expect("apply");
    let moved_id = container_details(&moved).container_id.expect("id");
    assert_ne!(moved_id, first_id);
    let request = reconciler.runtime().request(&moved_id).expect("request");
    assert_eq!(request.mounts[0].source, "/sessions/scratch@s2/data");
}

#[tokio::test]
async fn an_evicted_volume_fails_and_stops_the_container_instead_of_running_it_empty() {
    let (volumes, reconciler) = with_scratch_at("/sessions/scratch@s1/data");
    let resource = web(json!({"volumes": [{"sessionStorage": "scratch", "mountPath": "/data"}]}));
    let first = apply(&reconciler, &resource, None).await.expect("apply");
    let first_id = container_details(&first).container_id.expect("id");
    volumes.set(&scratch(), VolumeState::Evicted);
    reconciler.runtime().take_calls();
    let error = apply(&reconciler, &resource, Some(&record(&resource, &first)))
        .await
        .expect_err("evicted");
    assert_eq!(error.reason(), ErrorReason::SessionStorageEvicted);
    let calls = reconciler.runtime().take_calls();
    assert!(calls.contains(&Call::Remove(first_id)), "{calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Create(_) | Call::Start(_)))
    );
}

#[tokio::test]
async fn a_removed_container_is_recreated_and_its_restart_count_kept() {
    let (reconciler, resource, id, (hash, mut owned)) = created(json!({})).await;
    owned.restarts = 3;
    reconciler.runtime().remove(&id).await.expect("remove");
    let repaired = apply(&reconciler, &resource, Some(&(hash, owned)))
        .await
        .expect("apply");
    assert!(matches!(repaired.change, Change::Repaired { .. }));
    assert_eq!(container_details(&repaired).restarts, 3);
}

/// The delay the reconciler's error policy gives a failure, if it names one.
fn retry_after(error: &ContainerError) -> Option<Duration> {
    match <ContainerReconciler<FakeRuntime> as KindReconciler>::error_policy(error) {
        Retry::After(delay) => Some(delay),
        Retry::Backoff => None,
    }
}
