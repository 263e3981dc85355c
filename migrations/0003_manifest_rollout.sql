-- The rollout policy of a manifest generation (progress deadline and what to do when it passes),
-- stored and served verbatim like the signature. NULL when the manifest has none.
ALTER TABLE manifests ADD COLUMN rollout jsonb;
-- Denormalised from agent_status.conditions like manifest_rejected: the agent reported a
-- RolledBack condition with status True (it runs its last known-good generation).
ALTER TABLE agent_status ADD COLUMN rolled_back boolean NOT NULL DEFAULT false;
