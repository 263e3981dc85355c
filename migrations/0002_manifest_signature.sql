-- The operator's signature of a manifest generation, stored and served verbatim (the manager
-- never holds a signing key and does not verify: the agent does). NULL for an unsigned manifest.
ALTER TABLE manifests ADD COLUMN signature jsonb;
