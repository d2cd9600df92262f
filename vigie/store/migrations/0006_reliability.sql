-- The local spool's replay: for each spool (named by its epoch, for good), the last record
-- applied. It is moved forward in the transaction that applies the records, so a replay
-- interrupted by a crash, or repeated, applies nothing twice.
CREATE TABLE spool_replay (
    epoch      uuid PRIMARY KEY,
    node       text NOT NULL,
    seq        bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
