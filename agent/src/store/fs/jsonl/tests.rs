//! Tests of JSON Lines scanning: a missing file, clean files, and a torn last line versus a corrupt one.

use super::*;

fn scan_numbers(path: &Path) -> (Vec<u64>, Option<ScanReport>) {
    let mut seen = Vec::new();
    let report = scan::<u64>(path, |n| {
        seen.push(n);
        ControlFlow::Continue(())
    })
    .expect("scan");
    (seen, report)
}

#[test]
fn a_missing_file_is_none_and_clean_files_report_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.jsonl");
    assert_eq!(scan_numbers(&path), (vec![], None));
    std::fs::write(&path, "1\n2\n3\n").expect("write");
    assert_eq!(
        scan_numbers(&path),
        (vec![1, 2, 3], Some(ScanReport::default()))
    );
}

#[test]
fn only_a_bad_last_line_counts_as_torn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.jsonl");
    std::fs::write(&path, "1\n2\n3").expect("write");
    let (seen, report) = scan_numbers(&path);
    assert_eq!(seen, [1, 2]);
    assert_eq!(report.expect("exists").torn, Some((3, 4)));

    std::fs::write(&path, "1\n2\n\0\0\0\n").expect("write");
    let (seen, report) = scan_numbers(&path);
    assert_eq!(seen, [1, 2]);
    assert_eq!(report.expect("exists").torn, Some((3, 4)));

    std::fs::write(&path, "1\nnot json\n3\n4").expect("write");
    let (seen, report) = scan_numbers(&path);
    assert_eq!(seen, [1, 3]);
    let report = report.expect("exists");
    assert_eq!(report.corrupt.map(|(line, _)| line), Some(2));
    assert_eq!(report.torn, Some((4, 13)));
}
