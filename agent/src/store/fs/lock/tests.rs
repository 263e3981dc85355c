//! Tests of the state dir lock: a second holder is refused, naming the first, until it lets go.

use super::*;

#[test]
fn a_second_holder_is_refused_with_the_first_ones_name_until_it_lets_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_id = AgentId::try_from("pi-first").expect("id");
    let second_id = AgentId::try_from("pi-second").expect("id");
    let held = acquire(dir.path(), &first_id, true).expect("first lock");
    let error = acquire(dir.path(), &second_id, true).expect_err("second lock refused");
    let message = error.to_string();
    assert!(message.contains("pi-first"), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    drop(held);
    acquire(dir.path(), &second_id, true).expect("free again");
}
