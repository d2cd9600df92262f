-- Several nodes on one database (vigie.cluster): who is up, and which node watches which
-- camera. Times are the database's (now()): nodes never compare their own clocks.

CREATE TABLE nodes (
    name         text PRIMARY KEY,
    -- This run of the node: a restart is a new incarnation, and the leases of the previous
    -- one are not its own (they expire, then anyone may take them).
    incarnation  uuid NOT NULL,
    state        text NOT NULL CHECK (state IN ('up', 'stopped')),
    clustered    boolean NOT NULL,          -- takes part in camera leases
    started_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,      -- 'up' and past this: lost (dead or cut off)
    cameras      integer NOT NULL DEFAULT 0 -- cameras it watched at its last heartbeat
);

-- One row per configured camera ("<site>/<camera>"). Free when expires_at is past.
-- Renewals rewrite expires_at only, which no index covers: with room left in each page
-- (fillfactor), they are HOT updates that touch no index.
CREATE TABLE camera_leases (
    camera      text PRIMARY KEY,
    node        text,                       -- the holder's name, for people
    incarnation uuid,                       -- the holder: only it renews the lease
    expires_at  timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at timestamptz,
    -- A handover in progress: the holder offers the camera to a node below its share; that
    -- node starts watching and says 'ready'; the holder stops judging it and hands the
    -- lease over ('done'); the new holder starts judging it and clears the handover.
    offered_to  uuid,
    offered_at  timestamptz,
    handover    text CHECK (handover IN ('offered', 'ready', 'done')),
    CHECK ((handover IS NULL) = (offered_to IS NULL))
) WITH (fillfactor = 70);

CREATE INDEX camera_leases_holder ON camera_leases (incarnation);
-- Handovers in flight are few: every node looks for its own each round.
CREATE INDEX camera_leases_handovers ON camera_leases (offered_to) WHERE handover IS NOT NULL;
