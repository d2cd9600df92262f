-- Notifiers and correlation.
--
-- A notifier (webhook, Alertmanager) reads the alert changes of the live feed (`feed`, 0003)
-- in seq order, which is commit order, and keeps its place here: a restarted node, or the
-- node that takes over, neither sends again what was sent nor skips what was not. Only the
-- node holding the notifier's advisory lock sends and moves its cursor.
CREATE TABLE notify_cursors (
    notifier   text PRIMARY KEY,              -- its `name` in the config
    seq        bigint NOT NULL,               -- the last feed message dealt with
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Notifications given up: every attempt failed, or the receiver refused them for good.
CREATE TABLE notify_dead_letters (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notifier  text NOT NULL,
    seq       bigint NOT NULL,                -- the feed message
    type      text NOT NULL,                  -- alert.opened, alert.resolved, ...
    alert_id  uuid,
    site      text NOT NULL,
    attempts  integer NOT NULL,
    error     text NOT NULL,                  -- the last one; never a URL or a secret
    payload   jsonb NOT NULL,                 -- the body that was to be sent
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notify_dead_letters_failed ON notify_dead_letters (failed_at DESC, id DESC);

-- Correlation: alerts that belong together (a camera covered on a site whose intrusion alarm
-- is open), both ways.
ALTER TABLE alerts ADD COLUMN related uuid[] NOT NULL DEFAULT '{}';
