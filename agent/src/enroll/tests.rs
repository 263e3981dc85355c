//! Tests of enrollment's token file: a kept token is private and reads back.

use super::*;

#[test]
fn a_kept_token_is_private_and_read_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let agent = AgentId::try_from("pi-1").expect("valid id");
    assert!(kept_token(dir.path(), &agent).expect("readable").is_none());
    let path = token_path(dir.path(), &agent);
    keep_token(&path, "flt_secret").expect("kept");
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        kept_token(dir.path(), &agent).expect("readable"),
        Some(Token::new("flt_secret".into()))
    );
}
