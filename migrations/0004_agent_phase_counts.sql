-- Denormalised from resource_status and written in the same transaction as its rows: how many of
-- the agent's resources are in each phase, as {"Ready": 3, "Failed": 1}. A page of the fleet list
-- then reads one row per agent instead of counting every resource of every agent on the page.
ALTER TABLE agent_status ADD COLUMN phase_counts jsonb NOT NULL DEFAULT '{}';
UPDATE agent_status s SET phase_counts = c.counts
FROM (SELECT agent_id, jsonb_object_agg(phase, n) AS counts
      FROM (SELECT agent_id, phase, count(*) AS n FROM resource_status
            GROUP BY agent_id, phase) p
      GROUP BY agent_id) c
WHERE c.agent_id = s.agent_id;
