//! Tests of damage the filesystem store works around: a corrupt record quarantined with a typed
//! error, a lost seq file, and diagnostics that never quote a damaged record.

use super::*;

#[test]
fn a_corrupt_record_is_a_typed_error_naming_file_and_line_and_is_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_manifest(&manifest(2, "x")).expect("save");
    save_record(&store, "motd", "/etc/motd");
    save_record(&store, "issue", "/etc/issue");
    for _ in 0..5 {
        store
            .append_event(event(EventKind::ResourceRepaired, None, "drift"))
            .expect("append");
    }
    drop(store);
    let base = dir.path().join("agents/pi-kitchen-01");
    // The journal's first line holds motd's record; the second, issue's.
    let bad_record = base.join("resources.jsonl");
    let text = fs::read_to_string(&bad_record).expect("read");
    let issue_line = text.lines().nth(1).expect("two lines").to_owned();
    fs::write(
        &bad_record,
        format!("{{\"record\": {{\"id\": \"motd\", garbage\n{issue_line}\n"),
    )
    .expect("corrupt");
    fs::write(base.join("manifest.json"), "\0\0\0\0").expect("corrupt");
    // A bad line in the middle of a log is corruption, not a crash trace.
    let log = base.join("events.jsonl");
    let mut lines: Vec<String> = fs::read_to_string(&log)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect();
    lines[2] = "{\"seq\": oops".into();
    fs::write(&log, lines.join("\n") + "\n").expect("corrupt");

    let store = open(dir.path());
    // The log was quarantined at open, and event seqs still go up.
    assert_eq!(
        store
            .append_event(event(EventKind::ResourceRepaired, None, "x"))
            .expect("append"),
        6
    );
    let records = store
        .ownership_records()
        .expect("a corrupt record is not a crash");
    assert_eq!(records.keys().collect::<Vec<_>>(), [&rid("issue")]);
    assert_eq!(store.load_manifest().expect("loads as none"), None);

    let diagnostics = store.diagnostics();
    let corrupt_record = diagnostics
        .iter()
        .find_map(|d| match d {
            Diagnostic::Quarantined { path, .. } if *path == bad_record => Some(d.clone()),
            _ => None,
        })
        .expect("the record was quarantined");
    let Some(StoreError::Corrupt { path, line, .. }) = corrupt_record.as_store_error() else {
        panic!("a quarantine stands for a corrupt-record error");
    };
    assert!(path.ends_with("resources.jsonl"));
    assert_eq!(line, 1);
    let message = corrupt_record.to_string();
    assert!(
        message.contains("resources.jsonl") && message.contains("line 1"),
        "{message}"
    );
    assert!(diagnostics.iter().any(|d| matches!(
        d,
        Diagnostic::Quarantined { path, line: 3, .. } if *path == log
    )));
    assert!(diagnostics.iter().any(|d| matches!(
        d,
        Diagnostic::Quarantined { path, .. } if path.ends_with("manifest.json")
    )));
    let quarantined: Vec<String> = fs::read_dir(&base)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("resources.jsonl.corrupt-"))
        .collect();
    assert_eq!(quarantined.len(), 1, "kept for the operator");

    // The agent re-records the resource and carries on; a restart finds no damage left.
    save_record(&store, "motd", "/etc/motd");
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.ownership_records().expect("load").len(), 2);
    assert_eq!(seqs(&store.read_events(0, 100).expect("read")), [6]);
    assert!(store.diagnostics().is_empty(), "{:?}", store.diagnostics());
}

#[test]
fn a_lost_seq_file_does_not_make_a_report_seq_reusable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_last_report_seq(40).expect("save");
    store.save_status(&status(40)).expect("save");
    drop(store);
    fs::write(dir.path().join("agents/pi-kitchen-01/seq.json"), "garbage").expect("corrupt");
    let store = open(dir.path());
    assert_eq!(store.last_report_seq().expect("load"), 40);
    assert_eq!(store.diagnostics().len(), 1);
}

#[test]
fn a_diagnostic_never_quotes_the_content_of_a_damaged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.save_status(&status(1)).expect("save");
    let path = dir.path().join("agents/pi-kitchen-01/status.json");
    let text = fs::read_to_string(&path).expect("read");
    fs::write(
        &path,
        text.replace("\"reportSeq\": 1", "\"reportSeq\": \"hunter2\""),
    )
    .expect("damage");
    assert_eq!(store.load_status().expect("loads as none"), None);
    let diagnostics = store.diagnostics();
    assert_eq!(diagnostics.len(), 1);
    let message = diagnostics[0].to_string();
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        message.contains("status.json") && message.contains("line"),
        "{message}"
    );
}
