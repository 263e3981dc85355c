//! Tests of the filesystem store's event logs: paging by seq across rotation, and a torn last
//! line reported, skipped and cut before the next append.

use super::*;

#[test]
fn bounded_reads_page_by_seq_across_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path(), MIN_MAX_BYTES);
    let total = 2_000u64;
    for n in 1..=total {
        let resource = if n % 2 == 0 { "even" } else { "odd" };
        store
            .save_resource_state(&rid(resource), &resource_state("Ready", 0))
            .expect("save");
        let seq = store
            .append_event(event(
                EventKind::ResourceRepaired,
                Some(resource),
                &format!("n={n}"),
            ))
            .expect("append");
        assert_eq!(seq, n);
    }
    let base = dir.path().join("agents/pi-kitchen-01");
    assert!(base.join("events.jsonl.1").is_file(), "the log rotated");
    assert!(
        base.join("resources/even/events.jsonl.1").is_file(),
        "resource logs rotate too"
    );

    // One call never returns more than the cap, whatever the caller asks for.
    assert!(store.read_events(0, usize::MAX).expect("read").len() <= MAX_EVENTS_PER_READ);

    // Paging from 0 yields the retained tail: contiguous, increasing, ending at the last seq.
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = store.read_events(after, 7).expect("read");
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(seqs(&page));
    }
    assert!(all[0] > 1, "old segments were dropped");
    assert_eq!(all, (all[0]..=total).collect::<Vec<_>>());
    let live = fs::read_to_string(base.join("events.jsonl")).expect("read");
    let live_first: StoredEvent =
        serde_json::from_str(live.lines().next().expect("a line")).expect("an event");
    assert!(
        all[0] < live_first.seq,
        "the pages began in the previous segment and went on into the live one"
    );

    let mut after = 0;
    let mut even = Vec::new();
    loop {
        let page = store
            .read_resource_events(&rid("even"), after, 11)
            .expect("read");
        let Some(last) = page.last() else { break };
        after = last.seq;
        even.extend(seqs(&page));
    }
    assert_eq!(*even.last().expect("some"), total);
    assert!(
        even.windows(2).all(|w| w[1] == w[0] + 2),
        "every even seq, in order"
    );
}

#[test]
fn a_torn_last_line_is_reported_skipped_and_cut_before_the_next_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    save_state(&store, "motd", "Ready", 0);
    for _ in 0..3 {
        store
            .append_event(event(EventKind::ResourceRepaired, Some("motd"), "drift"))
            .expect("append");
    }
    drop(store);
    // What a power cut in the middle of the fourth append leaves behind.
    let base = dir.path().join("agents/pi-kitchen-01");
    for log in [
        base.join("events.jsonl"),
        base.join("resources/motd/events.jsonl"),
    ] {
        let mut file = OpenOptions::new().append(true).open(&log).expect("open");
        std::io::Write::write_all(&mut file, b"{\"seq\":4,\"at\":\"2026-").expect("tear");
    }

    let store = open(dir.path());
    let torn = base.join("events.jsonl");
    assert_eq!(
        store.diagnostics(),
        [Diagnostic::TornLine {
            path: torn.clone(),
            line: 4
        }]
    );
    assert!(store.diagnostics()[0].to_string().contains("events.jsonl"));
    assert_eq!(seqs(&store.read_events(0, 100).expect("read")), [1, 2, 3]);
    assert_eq!(
        seqs(
            &store
                .read_resource_events(&rid("motd"), 0, 100)
                .expect("read")
        ),
        [1, 2, 3]
    );

    let seq = store
        .append_event(event(
            EventKind::ResourceRepaired,
            Some("motd"),
            "after the cut",
        ))
        .expect("append");
    assert_eq!(seq, 4);
    assert_eq!(
        seqs(&store.read_events(0, 100).expect("read")),
        [1, 2, 3, 4]
    );
    assert_eq!(
        seqs(
            &store
                .read_resource_events(&rid("motd"), 0, 100)
                .expect("read")
        ),
        [1, 2, 3, 4]
    );
    for log in [torn, base.join("resources/motd/events.jsonl")] {
        let text = fs::read_to_string(&log).expect("read");
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            serde_json::from_str::<StoredEvent>(line).expect("every line is whole again");
        }
    }
    assert!(store.diagnostics().iter().any(|d| matches!(
        d,
        Diagnostic::TornLine { path, line: 4 } if path.ends_with("resources/motd/events.jsonl")
    )));
}
