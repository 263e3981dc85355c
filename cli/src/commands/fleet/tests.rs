//! Unit tests of `cli/src/commands/fleet.rs`.

use super::*;

fn answer(created: bool, rollout: bool) -> PutFleetResponse {
    PutFleetResponse {
        name: "kiosks".to_owned(),
        revision: 3,
        created,
        rollout,
    }
}

#[test]
fn apply_says_whether_the_revision_rolls_out() {
    assert_eq!(
        applied_line(&answer(true, true)),
        "kiosks: revision 3, rolling out (fleetlet rollout status kiosks --watch)"
    );
    assert_eq!(
        applied_line(&answer(false, false)),
        "kiosks: unchanged (revision 3)"
    );
    assert!(applied_line(&answer(true, false)).contains("nothing to roll out"));
}
