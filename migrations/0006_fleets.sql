-- Fleets (issue 20, docs/fleets.md): a selector, a template with typed parameters and a rollout
-- strategy, rendered by the manager into each selected device's ordinary manifest.

-- What the agent reports about its host (arch, os, hostname, model, kernel, memoryBytes) as the
-- string map that selectors' matchFacts compare with. NULL until an agent that knows facts reports.
ALTER TABLE agents ADD COLUMN facts jsonb;
-- The fleet that owns the device: the only fleet whose selector matches it. NULL when no fleet
-- or more than one selects it. A direct manifest PUT to an owned device is refused.
ALTER TABLE agents ADD COLUMN fleet text COLLATE "C";

CREATE TABLE fleets (
    name             text COLLATE "C" PRIMARY KEY,
    -- The newest revision; its row in fleet_revisions holds the fleet.
    revision         bigint NOT NULL CHECK (revision >= 1),
    -- The rollout's state, the pure state machine's own serialised form (manager/src/rollout);
    -- only the holder of the fleet's lease writes it.
    rollout          jsonb NOT NULL,
    -- Bumped by every write of rollout: writers compare-and-set on it.
    rollout_version  bigint NOT NULL DEFAULT 1,
    -- Denormalised from rollout for /metrics and lists.
    phase            text NOT NULL,
    -- The seq of the newest fleet event, bumped under the fleet row's lock.
    last_event_seq   bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- Every revision is kept, as the operator wrote it.
CREATE TABLE fleet_revisions (
    fleet            text COLLATE "C" NOT NULL REFERENCES fleets (name) ON DELETE CASCADE,
    revision         bigint NOT NULL CHECK (revision >= 1),
    -- The revision whose template, parameters and signature this one carries: itself when they
    -- changed, else the previous revision's content revision (then nothing rolls out).
    content_revision bigint NOT NULL,
    spec             jsonb NOT NULL,
    content_hash     text NOT NULL,
    -- Over what is rendered (template, parameters, signature).
    template_hash    text NOT NULL,
    created_at       timestamptz NOT NULL,
    created_by       text NOT NULL,
    PRIMARY KEY (fleet, revision)
);

-- One row per device a fleet selects.
CREATE TABLE fleet_devices (
    fleet             text COLLATE "C" NOT NULL REFERENCES fleets (name) ON DELETE CASCADE,
    agent_id          text COLLATE "C" NOT NULL REFERENCES agents (agent_id),
    -- Pending, Updating, Succeeded, Failed, Deferred, ParameterMissing, ParameterInvalid, Conflict.
    state             text NOT NULL,
    -- The (content) revision last written to the device and the manifest generation it became.
    -- Written in the same transaction as the manifest, under the condition that it differs: a
    -- device is never written twice for one revision, whichever replica tries.
    revision_rendered bigint,
    generation        bigint,
    -- The revision the state is about, and the batch of its rollout the device belongs to.
    state_revision    bigint,
    batch             integer,
    detail            text,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (fleet, agent_id)
);
CREATE INDEX fleet_devices_agent_idx ON fleet_devices (agent_id);

-- Who drives a fleet's rollout: a replica holds the lease until expires_at and renews it; another
-- replica takes it over once it expires. The selection lease is the row named '*selection*'.
CREATE TABLE fleet_leases (
    fleet      text COLLATE "C" PRIMARY KEY,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The fleet's own event log (revisions, batches, pauses, completions, conflicts, releases).
CREATE TABLE fleet_events (
    fleet      text COLLATE "C" NOT NULL REFERENCES fleets (name) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    type       text NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (fleet, seq)
);
