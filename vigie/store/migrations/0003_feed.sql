-- The live feed (GET /api/v1/stream): every alert and camera-state change, numbered
-- cluster-wide, kept for a bounded time so a console that reconnects with ?since= gets what
-- it missed. Rows are written under an advisory lock, so seq order is also commit order: a
-- reader that sees seq N has seen every committed seq below it.

CREATE TABLE feed (
    seq       bigserial PRIMARY KEY,
    at        timestamptz NOT NULL,               -- when the change happened
    type      text NOT NULL,                      -- alert.opened, …, camera.state
    site      text NOT NULL,                      -- for site-scoped tokens
    payload   jsonb NOT NULL,                     -- {"actor", "alert"} or {"camera"}
    stored_at timestamptz NOT NULL DEFAULT now()  -- retention is counted from here
);

-- Every seq up to trimmed_through has been deleted: a client resuming from before it has
-- missed something and must reload. A single row.
CREATE TABLE feed_horizon (
    single          boolean PRIMARY KEY DEFAULT true CHECK (single),
    trimmed_through bigint NOT NULL DEFAULT 0
);
INSERT INTO feed_horizon DEFAULT VALUES;
