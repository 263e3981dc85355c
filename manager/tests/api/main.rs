//! Manager API tests: the real router on 127.0.0.1:0 over a fresh PostgreSQL database per test
//! (`#[sqlx::test]` creates it from DATABASE_URL and applies `migrations/`). Without DATABASE_URL
//! these tests fail; they never skip. Every test that does not read the database's rows itself
//! also runs against the in-memory store of `--dev` (`on_both_stores!`): `NAME::postgres` and
//! `NAME::memory`.

/// Runs `async fn $name(store: Backend)` twice: `$name::postgres` on a fresh PostgreSQL
/// database, `$name::memory` on the in-memory store.
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[sqlx::test(migrations = "../migrations")]
            async fn postgres(pool: sqlx::PgPool) {
                super::$name(pool.into()).await
            }

            #[tokio::test]
            async fn memory() {
                super::$name(crate::support::Backend::Memory).await
            }
        }
    };
}

mod auth;
mod bad_input;
mod fleet;
mod fleets;
mod heartbeat;
mod manifests;
mod security;
mod status;
mod support;
