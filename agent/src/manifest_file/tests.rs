//! Tests of standalone mode: a generation that moves only when the resources change.

use super::*;

#[test]
fn a_file_without_generation_gets_one_that_moves_only_when_resources_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("manifest.json");
    let write = |text: &str| {
        std::fs::write(
            &path,
            format!(
                r#"{{"apiVersion":"fleetlet.dev/v1","kind":"AgentManifest","agentId":"pi","resources":[
                {{"id":"motd","kind":"File","spec":{{"path":"/r/motd","content":{{"text":"{text}"}},"mode":"0644"}}}}]}}"#
            ),
        )
        .expect("write");
    };
    write("one");
    let first = read_manifest_file(&path, None).expect("valid");
    assert_eq!(first.generation, Some(1));
    let same = read_manifest_file(&path, Some(&first)).expect("valid");
    assert_eq!(same.generation, Some(1));
    write("two");
    let second = read_manifest_file(&path, Some(&same)).expect("valid");
    assert_eq!(second.generation, Some(2));
    std::fs::write(&path, "{").expect("write");
    assert!(matches!(
        read_manifest_file(&path, Some(&second)),
        Err(ManifestFileError::Malformed { .. })
    ));
}

/// The watcher parses a file again only when its bytes changed, and what it sends is what
/// parsing every time would send: each new manifest once, each new error once.
#[tokio::test]
async fn the_watcher_sends_each_new_content_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("manifest.json");
    let valid = |text: &str| {
        format!(
            r#"{{"apiVersion":"fleetlet.dev/v1","kind":"AgentManifest","agentId":"pi","resources":[
            {{"id":"motd","kind":"File","spec":{{"path":"/r/motd","content":{{"text":"{text}"}},"mode":"0644"}}}}]}}"#
        )
    };
    // Replaced like an editor does (a new inode), so the watcher notices at once.
    let write = |text: &str| {
        let temporary = dir.path().join(".manifest.json.tmp");
        std::fs::write(&temporary, text).expect("write");
        std::fs::rename(&temporary, &path).expect("rename");
    };
    write(&valid("one"));
    let (sender, mut receiver) = mpsc::channel(16);
    let shutdown = crate::shutdown::Shutdown::new();
    let watcher = tokio::spawn(watch_manifest_file(
        path.clone(),
        None,
        Duration::from_millis(20),
        sender,
        shutdown.signal(),
    ));
    async fn next(receiver: &mut mpsc::Receiver<DesiredUpdate>) -> DesiredUpdate {
        tokio::time::timeout(Duration::from_secs(5), receiver.recv())
            .await
            .expect("an update in time")
            .expect("open")
    }
    // Nothing arrives while the file stays the same, re-read at every resync or rewritten
    // with the same bytes.
    async fn quiet(receiver: &mut mpsc::Receiver<DesiredUpdate>) {
        let update = tokio::time::timeout(Duration::from_millis(200), receiver.recv()).await;
        assert!(update.is_err(), "nothing new was sent: {update:?}");
    }

    let DesiredUpdate::Manifest(first) = next(&mut receiver).await else {
        panic!("the first manifest")
    };
    assert_eq!(first.generation, Some(1));
    quiet(&mut receiver).await;
    write(&valid("one"));
    quiet(&mut receiver).await;

    write(&valid("two"));
    let DesiredUpdate::Manifest(second) = next(&mut receiver).await else {
        panic!("the changed manifest")
    };
    assert_eq!(second.generation, Some(2));

    write("{");
    assert!(matches!(
        next(&mut receiver).await,
        DesiredUpdate::Rejected(_)
    ));
    write("{");
    quiet(&mut receiver).await;

    // Gone, then back with the bytes that were refused: the read error and then the parse
    // error are new again.
    std::fs::remove_file(&path).expect("remove");
    let DesiredUpdate::Rejected(gone) = next(&mut receiver).await else {
        panic!("a read error")
    };
    assert!(gone.contains("could not read"), "{gone}");
    write("{");
    let DesiredUpdate::Rejected(malformed) = next(&mut receiver).await else {
        panic!("a parse error")
    };
    assert!(malformed.contains("not valid JSON"), "{malformed}");

    write(&valid("three"));
    let DesiredUpdate::Manifest(third) = next(&mut receiver).await else {
        panic!("the next manifest")
    };
    assert_eq!(third.generation, Some(3));
    quiet(&mut receiver).await;

    shutdown.trigger();
    watcher.await.expect("watcher");
}
