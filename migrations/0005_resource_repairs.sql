-- Drift repairs per resource (issue 18): the agent's count with its last repair, as reported
-- (NULL until the first repair), and how much of that count `ResourceRepaired` events already
-- told and when the last one was appended, so that a resource drifting at every resync adds at
-- most one event per interval. Existing rows have had no repair reported.
ALTER TABLE resource_status ADD COLUMN repairs jsonb;
ALTER TABLE resource_status ADD COLUMN repairs_evented bigint NOT NULL DEFAULT 0;
ALTER TABLE resource_status ADD COLUMN repair_evented_at timestamptz;
