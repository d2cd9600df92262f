-- Camera health: transitions (every change, with its measurements), low-rate samples for
-- history, the learned reference of each camera, and snapshot metadata.

CREATE TABLE camera_transitions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site       text NOT NULL,
    camera     text NOT NULL,
    at         timestamptz NOT NULL,
    state      text NOT NULL CHECK (state IN ('unknown', 'ok', 'degraded', 'offline')),
    reasons    text[] NOT NULL DEFAULT '{}',
    previous   text,
    details    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX camera_transitions_camera_at ON camera_transitions (site, camera, at DESC);

CREATE TABLE camera_samples (
    site      text NOT NULL,
    camera    text NOT NULL,
    at        timestamptz NOT NULL,
    state     text NOT NULL,
    reasons   text[] NOT NULL DEFAULT '{}',
    fps       real,
    bitrate   real,
    measures  jsonb,
    PRIMARY KEY (site, camera, at)
);

CREATE TABLE camera_references (
    site       text NOT NULL,
    camera     text NOT NULL,
    learned_at timestamptz NOT NULL,
    data       bytea NOT NULL,
    PRIMARY KEY (site, camera)
);

-- 'latest': the last analysed frame of each camera (one row per camera, replaced);
-- 'kept': a copy attached to an alert.
CREATE TABLE snapshots (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site     text NOT NULL,
    camera   text NOT NULL,
    kind     text NOT NULL CHECK (kind IN ('latest', 'kept')),
    taken_at timestamptz NOT NULL,
    path     text NOT NULL,          -- relative to node.data_dir
    bytes    integer NOT NULL
);
CREATE UNIQUE INDEX snapshots_latest ON snapshots (site, camera) WHERE kind = 'latest';
CREATE INDEX snapshots_camera_taken ON snapshots (site, camera, taken_at DESC);
