//! Manager API tests: the real router on 127.0.0.1:0 over a fresh PostgreSQL database per test
//! (`#[sqlx::test]` creates it from DATABASE_URL and applies `migrations/`). Without DATABASE_URL
//! these tests fail; they never skip.

mod auth;
mod bad_input;
mod fleet;
mod heartbeat;
mod manifests;
mod security;
mod status;
mod support;
