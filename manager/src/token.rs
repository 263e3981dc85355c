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
mod tests;
