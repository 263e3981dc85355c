//! Tests of bearer tokens: minting, hashing, matching and a Debug that hides the hash.

use super::*;

#[test]
fn minted_tokens_have_the_prefix_and_32_random_bytes() {
    let token = mint_agent_token();
    assert!(token.starts_with(AGENT_TOKEN_PREFIX));
    let digits = &token[AGENT_TOKEN_PREFIX.len()..];
    assert_eq!(digits.len(), 64);
    assert!(digits.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(token, mint_agent_token());
}

#[test]
fn hash_is_the_sha256_of_the_token() {
    assert_eq!(
        hash_token("abc").to_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn hashes_match_only_their_own_token() {
    assert!(hash_token("one").matches(&hash_token("one")));
    assert!(!hash_token("one").matches(&hash_token("two")));
}

#[test]
fn debug_output_hides_the_hash() {
    assert_eq!(format!("{:?}", hash_token("secret")), "TokenHash(..)");
}
