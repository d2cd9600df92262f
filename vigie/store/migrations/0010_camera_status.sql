-- Several nodes: what the node watching a camera knows of it, for the API of every other node
-- (GET /api/v1/cameras on any node behind a Service shows every camera). The holder writes
-- its cameras' live view every few seconds, and their latest snapshot at a modest rate, so
-- that no node needs another's disk or address. One row per camera, replaced in place.
CREATE TABLE camera_status (
    site        text NOT NULL,
    camera      text NOT NULL,
    node        text NOT NULL,             -- the holder that wrote the row
    updated_at  timestamptz NOT NULL,
    view        jsonb NOT NULL,            -- state, reasons, since, last measurements (no URL)
    snapshot    bytea,                     -- latest analysed frame (JPEG), replaced
    snapshot_at timestamptz,
    PRIMARY KEY (site, camera)
) WITH (fillfactor = 70);                  -- views are rewritten in place: room for HOT updates

-- Pictures kept for alerts are files on the disk of the node that watched the camera at the
-- time; a copy here lets every node serve them (GET /api/v1/snapshots/{id}). Few (one per
-- alert), and deleted with their row by the retention job.
CREATE TABLE snapshot_images (
    id   bigint PRIMARY KEY REFERENCES snapshots (id) ON DELETE CASCADE,
    data bytea NOT NULL
);
