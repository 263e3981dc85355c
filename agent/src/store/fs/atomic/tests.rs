//! Tests of atomic replacement and quarantine: no temporary left behind, one quarantined copy kept.

use super::*;

#[test]
fn a_replacement_leaves_no_temporary_and_quarantine_keeps_one_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.json");
    write_atomically(&path, b"one", true).expect("write");
    write_atomically(&path, b"two", true).expect("write");
    assert_eq!(fs::read(&path).expect("read"), b"two");
    assert!(!temp_path(&path).exists());
    assert!(is_temp_name(&file_name_of(&temp_path(&path))));

    quarantine(&path, true).expect("quarantine");
    assert!(!path.exists());
    write_atomically(&path, b"three", true).expect("write");
    let second = quarantine(&path, true).expect("quarantine");
    let copies: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "older quarantined copies are dropped: {copies:?}"
    );
    assert_eq!(fs::read(&second).expect("read"), b"three");
    assert!(remove_durably(&second, true).expect("remove"));
    assert!(!remove_durably(&second, true).expect("remove"));
}
