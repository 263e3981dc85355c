-- The manager's schema: agents, their manifest history, their last status and their event log.
-- Identifiers, states, generations and timestamps are columns (indexed where filtered on); JSONB
-- holds only what is kind-specific or free-form (labels, agent info, conditions, details, payloads).
-- Released migrations are never edited: sqlx checks their checksums at every start.

CREATE TABLE agents (
    -- "C" collation: ids compare bytewise, so cursors order the same on every cluster.
    agent_id           text COLLATE "C" PRIMARY KEY,
    labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- SHA-256 (hex) of the agent's current token; NULL once decommissioned.
    token_hash         text UNIQUE,
    registered_at      timestamptz NOT NULL,
    last_seen_at       timestamptz,
    last_report_seq    bigint,
    agent_info         jsonb,
    decommissioned_at  timestamptz,
    -- Denormalised from manifests so that the fleet list needs no aggregate over the history.
    desired_generation bigint NOT NULL DEFAULT 0,
    -- The seq of the newest event; bumped under the row lock so seqs are dense per agent.
    last_event_seq     bigint NOT NULL DEFAULT 0
);
CREATE INDEX agents_labels_idx ON agents USING gin (labels jsonb_path_ops);
CREATE INDEX agents_active_idx ON agents (agent_id) WHERE decommissioned_at IS NULL;

CREATE TABLE manifests (
    agent_id     text COLLATE "C" NOT NULL REFERENCES agents (agent_id),
    generation   bigint NOT NULL CHECK (generation >= 1),
    resources    jsonb NOT NULL,
    content_hash text NOT NULL,
    created_at   timestamptz NOT NULL,
    created_by   text NOT NULL,
    PRIMARY KEY (agent_id, generation)
);

CREATE TABLE agent_status (
    agent_id            text COLLATE "C" PRIMARY KEY REFERENCES agents (agent_id),
    manifest_generation bigint NOT NULL,
    observed_generation bigint NOT NULL,
    report_seq          bigint NOT NULL,
    conditions          jsonb NOT NULL DEFAULT '[]'::jsonb,
    manifest_rejected   boolean NOT NULL DEFAULT false,
    observed_at         timestamptz NOT NULL,
    received_at         timestamptz NOT NULL
);

CREATE TABLE resource_status (
    agent_id      text COLLATE "C" NOT NULL REFERENCES agents (agent_id),
    resource_id   text COLLATE "C" NOT NULL,
    kind          text NOT NULL,
    phase         text NOT NULL,
    since         timestamptz NOT NULL,
    generation    bigint NOT NULL,
    spec_hash     text,
    error_reason  text,
    error_message text,
    retry_after   timestamptz,
    details       jsonb,
    updated_at    timestamptz NOT NULL,
    PRIMARY KEY (agent_id, resource_id)
);
CREATE INDEX resource_status_phase_idx ON resource_status (phase, agent_id);

CREATE TABLE events (
    agent_id    text COLLATE "C" NOT NULL REFERENCES agents (agent_id),
    seq         bigint NOT NULL,
    type        text NOT NULL,
    resource_id text,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX events_type_idx ON events (type, created_at);
