//! Tests of the resource table: replay of the journal without a flush, unchanged saves that
//! write nothing, compaction, and import of the layout before the journal.

use super::*;

fn journal_len(dir: &Path) -> u64 {
    fs::metadata(dir.join("agents/pi-kitchen-01/resources.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn records_and_states_come_back_from_the_journal_without_a_flush_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    save_record(&store, "motd", "/etc/motd");
    save_state(&store, "motd", "Ready", 0);
    save_state(&store, "issue", "Failed", 2);
    store.remove_resource_state(&rid("issue")).expect("remove");
    // A kill -9: no flush, no drop-time work beyond releasing the lock.
    drop(store);
    // And a power cut in the middle of the next line.
    let journal = dir.path().join("agents/pi-kitchen-01/resources.jsonl");
    let whole = fs::read(&journal).expect("read");
    let mut torn = whole.clone();
    torn.extend_from_slice(b"{\"state\":{\"id\":\"motd\",\"value\":{\"sta");
    fs::write(&journal, &torn).expect("tear");

    let store = open(dir.path());
    assert_eq!(
        store.diagnostics(),
        [Diagnostic::TornLine {
            path: journal.clone(),
            line: 5
        }]
    );
    assert_eq!(
        store.ownership_records().expect("load")[&rid("motd")],
        record("/etc/motd")
    );
    let states = store.resource_states().expect("load");
    assert_eq!(states.keys().collect::<Vec<_>>(), [&rid("motd")]);
    assert_eq!(states[&rid("motd")], resource_state("Ready", 0));

    save_state(&store, "motd", "Failed", 1);
    store.flush().expect("flush");
    let text = fs::read_to_string(&journal).expect("read");
    assert!(text.starts_with(std::str::from_utf8(&whole).expect("utf-8")));
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is whole again");
    }
    drop(store);
    let store = open(dir.path());
    assert!(store.diagnostics().is_empty(), "{:?}", store.diagnostics());
    assert_eq!(
        store.resource_states().expect("load")[&rid("motd")],
        resource_state("Failed", 1)
    );
}

#[test]
fn saving_an_unchanged_record_or_state_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    save_record(&store, "motd", "/etc/motd");
    save_state(&store, "motd", "Ready", 0);
    store.flush().expect("flush");
    let written = journal_len(dir.path());
    assert!(written > 0);
    for _ in 0..100 {
        save_record(&store, "motd", "/etc/motd");
        save_state(&store, "motd", "Ready", 0);
        store.remove_resource_state(&rid("gone")).expect("remove");
        store.remove_ownership_record(&rid("gone")).expect("remove");
        store.flush().expect("flush");
    }
    assert_eq!(
        journal_len(dir.path()),
        written,
        "a resync pass writes nothing"
    );
    save_state(&store, "motd", "Ready", 1);
    assert!(journal_len(dir.path()) > written, "a change is written");
}

#[test]
fn a_growing_journal_is_compacted_into_the_snapshot_and_a_crash_in_between_is_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("agents/pi-kitchen-01");
    let store = open_small(dir.path(), MIN_MAX_BYTES);
    let ids: Vec<ResourceId> = (0..20).map(|n| rid(&format!("file-{n}"))).collect();
    let mut state = resource_state("Ready", 0);
    let mut peak = 0;
    for generation in 1..=200 {
        state.status.generation = generation;
        for id in &ids {
            store.save_resource_state(id, &state).expect("save");
        }
        peak = peak.max(journal_len(dir.path()));
    }
    store.flush().expect("flush");
    assert!(base.join("resources.json").is_file(), "snapshot written");
    assert!(
        peak <= 64 * 1024 + 1024,
        "the journal is compacted once it passes its share: peak {peak} bytes"
    );
    assert!(journal_len(dir.path()) < peak);
    drop(store);

    let store = open(dir.path());
    let states = store.resource_states().expect("load");
    assert_eq!(states.len(), ids.len());
    assert!(states.values().all(|s| s.status.generation == 200));
    drop(store);

    // A crash after a compaction wrote its snapshot but before it emptied the journal: the
    // journal's lines are all in the snapshot already, and replaying them changes nothing.
    let journal = base.join("resources.jsonl");
    let store = open(dir.path());
    state.status.generation = 201;
    store.save_resource_state(&ids[0], &state).expect("save");
    drop(store);
    let lines = fs::read(&journal).expect("read");
    fs::write(
        base.join("resources.json"),
        serde_json::to_vec(&journal::Table {
            records: BTreeMap::new(),
            states: open(dir.path()).resource_states().expect("load"),
        })
        .expect("serialise"),
    )
    .expect("write snapshot");
    fs::write(&journal, &lines).expect("keep the journal");
    let store = open(dir.path());
    let states = store.resource_states().expect("load");
    assert_eq!(states[&ids[0]].status.generation, 201);
    assert!(states.values().skip(1).all(|s| s.status.generation == 200));
    assert!(store.diagnostics().is_empty(), "{:?}", store.diagnostics());
}

#[test]
fn a_store_written_in_the_layout_before_the_journal_opens_with_everything_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("agents/pi-kitchen-01");
    // What an agent before the journal left: a record and a state file per resource.
    let motd = base.join("resources/motd");
    fs::create_dir_all(&motd).expect("mkdir");
    fs::write(motd.join("record.json"), pretty(&record("/etc/motd"))).expect("write");
    fs::write(motd.join("state.json"), pretty(&resource_state("Ready", 0))).expect("write");
    let issue = base.join("resources/issue");
    fs::create_dir_all(&issue).expect("mkdir");
    fs::write(
        issue.join("state.json"),
        pretty(&resource_state("Failed", 3)),
    )
    .expect("write");
    let empty = base.join("resources/gone");
    fs::create_dir_all(&empty).expect("mkdir");
    fs::write(
        empty.join("events.jsonl"),
        "{\"seq\":1,\"at\":\"2026-11-22T10:00:00Z\",\"kind\":\"ResourceDeleted\",\"message\":\"x\"}\n",
    )
    .expect("write");

    let store = open(dir.path());
    assert_eq!(
        store.ownership_records().expect("load"),
        BTreeMap::from([(rid("motd"), record("/etc/motd"))])
    );
    assert_eq!(
        store.resource_states().expect("load"),
        BTreeMap::from([
            (rid("issue"), resource_state("Failed", 3)),
            (rid("motd"), resource_state("Ready", 0)),
        ])
    );
    assert!(store.diagnostics().is_empty(), "{:?}", store.diagnostics());
    assert!(
        base.join("resources.json").is_file(),
        "the snapshot holds them now"
    );
    for old in [
        motd.join("record.json"),
        motd.join("state.json"),
        issue.join("state.json"),
    ] {
        assert!(!old.exists(), "{} was left behind", old.display());
    }
    assert!(!empty.exists(), "a directory of nothing tracked goes");
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.ownership_records().expect("load").len(), 1);
    assert_eq!(store.resource_states().expect("load").len(), 2);
}

/// A record as the layout before the journal wrote it: pretty JSON and a newline.
fn pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("serialise") + "\n"
}
