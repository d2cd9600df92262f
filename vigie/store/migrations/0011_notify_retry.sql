-- Dead letters sent again on an admin's request (POST /api/v1/notifiers/dead-letters/…/retry).
--
-- The API node only queues the letter here: the node that holds the notifier's advisory lock
-- (whichever it is) sends it, in its notifier loop, on the connection that holds the lock —
-- so one node sends it, once, through the same delivery path as the live changes. Sent: the
-- row is deleted (the list holds what still needs someone); failed again: the request is
-- cleared and attempts, error and failed_at say what happened.
ALTER TABLE notify_dead_letters
    ADD COLUMN retry_requested_at timestamptz,  -- queued for a resend; null: not queued
    ADD COLUMN retry_requested_by text,         -- the token (or cli:<user>) that asked
    ADD COLUMN retries integer NOT NULL DEFAULT 0;  -- resends that failed again

-- What a lock holder looks for after every catch-up of the feed: few rows, often none.
CREATE INDEX notify_dead_letters_queued ON notify_dead_letters (notifier, seq, id)
    WHERE retry_requested_at IS NOT NULL;
