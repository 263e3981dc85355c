//! Bearer tokens: minting agent tokens, hashing every token, and comparing in constant time.
//!
//! Agent tokens are `flt_` followed by 64 hex digits (32 random bytes). The manager keeps only
//! their SHA-256, so a leaked database does not hand out working tokens. Admin and reader tokens
//! come from the configuration and are also compared through their hashes, in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every agent token starts with this, so a token in a log or a paste is recognisable.
pub const AGENT_TOKEN_PREFIX: &str = "flt_";

/// A new random agent token.
pub fn mint_agent_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{AGENT_TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The SHA-256 of a token, as stored and compared.
pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// The hash of a token. Its `Debug` shows no bytes, so it is safe in any log.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Lowercase hex, the form kept in the database.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Compares without an early exit, so the time taken says nothing about where they differ.
    pub fn matches(&self, other: &TokenHash) -> bool {
        let difference = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        difference == 0
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

#[cfg(test)]
mod tests {
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
}
