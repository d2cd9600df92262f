-- Core schema: configuration mirror, events, alerts and their history, dead letters,
-- API tokens and the audit log.

CREATE TABLE sites (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    uai          text NOT NULL,
    commune      text NOT NULL DEFAULT '',
    timezone     text NOT NULL DEFAULT 'Europe/Paris',
    holiday_zone text,
    active       boolean NOT NULL DEFAULT true,   -- false once removed from the config
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cameras (
    site       text NOT NULL REFERENCES sites (id),
    id         text NOT NULL,
    name       text NOT NULL DEFAULT '',
    zone       text NOT NULL DEFAULT '',
    url        text NOT NULL,                   -- redacted: credentials never reach the database
    transport  text NOT NULL DEFAULT 'tcp',
    active     boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, id)
);

CREATE TABLE sensors (
    site          text NOT NULL REFERENCES sites (id),
    id            text NOT NULL,
    kind          text NOT NULL,
    name          text NOT NULL DEFAULT '',
    zone          text NOT NULL DEFAULT '',
    format        text NOT NULL DEFAULT 'native',
    topic         text,
    active        boolean NOT NULL DEFAULT true,
    last_state    text,
    last_event_at timestamptz,
    online        boolean,
    battery       smallint,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, id)
);

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedup_key   text NOT NULL,
    site        text NOT NULL,
    sensor      text NOT NULL,
    kind        text NOT NULL,
    state       text NOT NULL,
    zone        text NOT NULL DEFAULT '',
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'
);
-- A message redelivered by the broker carries the same key: stored once.
CREATE UNIQUE INDEX events_dedup_key ON events (dedup_key);
CREATE INDEX events_site_ts ON events (site, ts DESC, id DESC);
CREATE INDEX events_ts ON events (ts DESC, id DESC);

CREATE TABLE alerts (
    id               uuid PRIMARY KEY,
    fingerprint      text NOT NULL,            -- site/source/kind
    site             text NOT NULL,
    source           text NOT NULL,
    source_type      text NOT NULL CHECK (source_type IN ('sensor', 'camera', 'site')),
    kind             text NOT NULL,
    severity         text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'info')),
    state            text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    title            text NOT NULL,
    details          jsonb NOT NULL DEFAULT '{}',
    opened_at        timestamptz NOT NULL,
    last_seen_at     timestamptz NOT NULL,
    count            integer NOT NULL DEFAULT 1,
    acknowledged_by  text,
    acknowledged_at  timestamptz,
    resolved_by      text,
    resolved_at      timestamptz,
    escalation_level integer NOT NULL DEFAULT 0,
    silenced         boolean NOT NULL DEFAULT false,
    snapshots        jsonb NOT NULL DEFAULT '[]',
    event_id         bigint
);
-- At most one unresolved alert per fingerprint, whatever the number of nodes.
CREATE UNIQUE INDEX alerts_one_unresolved ON alerts (fingerprint) WHERE state <> 'resolved';
CREATE INDEX alerts_opened ON alerts (opened_at DESC, id DESC);
CREATE INDEX alerts_state_opened ON alerts (state, opened_at DESC, id DESC);
CREATE INDEX alerts_site_opened ON alerts (site, opened_at DESC, id DESC);

CREATE TABLE alert_history (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id uuid NOT NULL REFERENCES alerts (id),
    at       timestamptz NOT NULL,
    actor    text NOT NULL,
    action   text NOT NULL,
    comment  text,
    details  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_history_alert ON alert_history (alert_id, at, id);

CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    payload      bytea NOT NULL,               -- truncated to a bounded size
    payload_size integer NOT NULL
);
CREATE INDEX dead_letters_received ON dead_letters (received_at DESC);

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    hash         bytea NOT NULL UNIQUE,        -- SHA-256 of the token; the token itself is never stored
    role         text NOT NULL CHECK (role IN ('admin', 'operator', 'technician', 'viewer')),
    sites        text[],                       -- NULL: every site
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE UNIQUE INDEX api_tokens_name_active ON api_tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text,
    site    text,
    remote  text,
    outcome text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
