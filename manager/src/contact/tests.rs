//! Tests of contact notes: the newest contact per agent is written once.

use super::*;
use crate::store::memory::MemoryStore;

#[tokio::test]
async fn the_newest_contact_per_agent_is_written_once() {
    let store = Store::Memory(MemoryStore::new(crate::watch::ManifestWatch::default()));
    let agent = AgentId::try_from("pi-1").expect("valid id");
    let now = OffsetDateTime::now_utc();
    store
        .register_agent(
            &agent,
            &Default::default(),
            crate::token::hash_token("t"),
            now,
        )
        .await
        .expect("registered");
    let contacts = Contacts::default();
    let later = now + time::Duration::seconds(5);
    contacts.note(&agent, later);
    contacts.note(&agent, now);
    contacts.write(&store).await;
    let (row, _) = store.status(&agent).await.expect("status");
    assert_eq!(row.last_seen_at, Some(later));
    assert!(contacts.pending.lock().expect("lock").is_empty());
}
