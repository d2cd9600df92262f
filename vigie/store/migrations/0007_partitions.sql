-- The large tables become tables partitioned by time, so that retention drops a whole
-- partition (instant, no bloat, no vacuum debt) instead of deleting rows one by one:
--   events          by received_at, one partition a month, plus a default partition
--   camera_samples  by at,          one partition a day,   plus a default partition
--   audit_log       by at,          one partition a month, no default partition
-- Partitions are named <table>_p<YYYY_MM> or <table>_p<YYYY_MM_DD>; vigie creates them ahead
-- (vigie/store/_retention.py) and drops those wholly older than the retention period.
--
-- The default partitions take rows whose time has no partition yet (a device or test clock
-- far from now, a node that was down when a partition should have been created): ingestion
-- never fails for want of a partition. Creating a partition moves its rows out of the
-- default one. audit_log has none: its `at` is the database's now(), always covered by the
-- partitions made ahead, and an audit row must never be deleted, not even to be moved.
--
-- A unique index on a partitioned table must contain the partition key, and a redelivered
-- message has a new received_at (and, without a device timestamp, a new ts), so the event
-- dedup key cannot stay unique on `events` itself: it moves to its own narrow table,
-- event_keys, kept for the redelivery window (rows deleted in batches: they are small).

-- Partition bounds and names are in UTC, whatever the server's or the session's time zone.
SET LOCAL TimeZone = 'UTC';

-- Create one partition [lo, hi) of a time-partitioned table, moving the rows of that range
-- out of its default partition (if any) first: a default partition that holds rows of the
-- range would make the new partition's creation fail. Returns false if it already exists.
CREATE FUNCTION vigie_create_partition(parent text, suffix text, lo timestamptz,
                                       hi timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    part text := parent || '_p' || suffix;
    dflt text := parent || '_default';
    key  text;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN false;
    END IF;
    SELECT a.attname INTO STRICT key
    FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent::regclass;
    IF to_regclass(dflt) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       part, parent, lo, hi);
        RETURN true;
    END IF;
    -- No writer may put a row of the range into the default partition between the move
    -- and the attach (writers wait a few milliseconds; readers are not blocked).
    EXECUTE format('LOCK TABLE %I IN SHARE ROW EXCLUSIVE MODE', parent);
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   part, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved', dflt, key, lo, key, hi, part);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, part, lo, hi);
    RETURN true;
END
$$;

-- events ------------------------------------------------------------------------------------

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER INDEX events_dedup_key RENAME TO events_unpartitioned_dedup_key;
ALTER INDEX events_site_ts RENAME TO events_unpartitioned_site_ts;
ALTER INDEX events_ts RENAME TO events_unpartitioned_ts;
ALTER SEQUENCE events_id_seq RENAME TO events_unpartitioned_id_seq;

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    dedup_key   text NOT NULL,
    site        text NOT NULL,
    sensor      text NOT NULL,
    kind        text NOT NULL,
    state       text NOT NULL,
    zone        text NOT NULL DEFAULT '',
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX events_site_ts ON events (site, ts DESC, id DESC);
CREATE INDEX events_ts ON events (ts DESC, id DESC);
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- A message redelivered by the broker carries the same key: stored once (see above).
CREATE TABLE event_keys (
    dedup_key   text PRIMARY KEY,
    received_at timestamptz NOT NULL
);
CREATE INDEX event_keys_received ON event_keys (received_at);

INSERT INTO events (id, dedup_key, site, sensor, kind, state, zone, ts, received_at, data)
OVERRIDING SYSTEM VALUE
SELECT id, dedup_key, site, sensor, kind, state, zone, ts, received_at, data
FROM events_unpartitioned;
INSERT INTO event_keys (dedup_key, received_at)
SELECT dedup_key, received_at FROM events_unpartitioned;
SELECT setval(pg_get_serial_sequence('events', 'id'),
              coalesce((SELECT max(id) FROM events_unpartitioned), 0) + 1, false);
DROP TABLE events_unpartitioned;

-- camera_samples ----------------------------------------------------------------------------

ALTER TABLE camera_samples RENAME TO camera_samples_unpartitioned;
ALTER TABLE camera_samples_unpartitioned
    RENAME CONSTRAINT camera_samples_pkey TO camera_samples_unpartitioned_pkey;

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
) PARTITION BY RANGE (at);
CREATE TABLE camera_samples_default PARTITION OF camera_samples DEFAULT;
INSERT INTO camera_samples SELECT * FROM camera_samples_unpartitioned;
DROP TABLE camera_samples_unpartitioned;

-- audit_log ---------------------------------------------------------------------------------

ALTER TABLE audit_log RENAME TO audit_log_unpartitioned;
ALTER TABLE audit_log_unpartitioned RENAME CONSTRAINT audit_log_pkey
    TO audit_log_unpartitioned_pkey;
ALTER INDEX audit_log_at RENAME TO audit_log_unpartitioned_at;
ALTER SEQUENCE audit_log_id_seq RENAME TO audit_log_unpartitioned_id_seq;

CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text,
    site    text,
    remote  text,
    outcome text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_actor_at ON audit_log (actor, at DESC, id DESC);
CREATE INDEX audit_log_site_at ON audit_log (site, at DESC, id DESC);

-- Every month that holds a row, and the next ones, so that every existing row and every
-- row written from now on has its partition.
SELECT vigie_create_partition('audit_log', to_char(m, 'YYYY_MM'), m, m + interval '1 month')
FROM generate_series(
    date_trunc('month', least((SELECT min(at) FROM audit_log_unpartitioned), now())),
    date_trunc('month', now()) + interval '3 months',
    interval '1 month') AS m;
INSERT INTO audit_log (id, at, actor, action, target, site, remote, outcome, details)
OVERRIDING SYSTEM VALUE
SELECT id, at, actor, action, target, site, remote, outcome, details
FROM audit_log_unpartitioned;
SELECT setval(pg_get_serial_sequence('audit_log', 'id'),
              coalesce((SELECT max(id) FROM audit_log_unpartitioned), 0) + 1, false);
DROP TABLE audit_log_unpartitioned;

-- Camera transitions and dead letters stay plain tables (a few rows per camera and day; a
-- bounded trickle): retention deletes their old rows, by time.
CREATE INDEX camera_transitions_at ON camera_transitions (at);

-- This month and the next three (events), today and the next week (camera samples), so
-- that rows go to their partitions from the start; vigie keeps creating them ahead.
SELECT vigie_create_partition('events', to_char(m, 'YYYY_MM'), m, m + interval '1 month')
FROM generate_series(date_trunc('month', now()), date_trunc('month', now()) + interval '3 months',
                     interval '1 month') AS m;
SELECT vigie_create_partition('camera_samples', to_char(d, 'YYYY_MM_DD'), d, d + interval '1 day')
FROM generate_series(date_trunc('day', now()), date_trunc('day', now()) + interval '7 days',
                     interval '1 day') AS d;
