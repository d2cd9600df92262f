-- The operator workflow: escalation state, assignment, resolution category, and silences
-- (maintenance windows).

-- Escalation lives here, not in a timer: any node picks up what is due, after a restart too.
-- escalations_left counts down from escalate_max and starts again on un-acknowledge;
-- next_escalation_at is NULL when nothing is due (acknowledged, resolved, no policy, done).
ALTER TABLE alerts
    ADD COLUMN escalate_after     interval,
    ADD COLUMN escalate_repeat    interval,
    ADD COLUMN escalate_max       integer NOT NULL DEFAULT 0,
    ADD COLUMN escalations_left   integer NOT NULL DEFAULT 0,
    ADD COLUMN next_escalation_at timestamptz,
    ADD COLUMN escalated_at       timestamptz,
    ADD COLUMN assigned_to        text,
    ADD COLUMN assigned_at        timestamptz,
    ADD COLUMN resolution         text CHECK (resolution IN (
        'real_incident', 'false_alarm', 'technical_fault', 'test', 'auto'));

CREATE INDEX alerts_escalation_due ON alerts (next_escalation_at)
    WHERE next_escalation_at IS NOT NULL;
-- The silence sweep looks for silenced, unresolved alerts every few seconds.
CREATE INDEX alerts_silenced_unresolved ON alerts (id) WHERE silenced AND state <> 'resolved';

-- Matchers are exact values or globs with '*'; the *_like columns are the same patterns for
-- LIKE ('*' → '%', with '%', '_' and '\' escaped), written by PostgreSQL so they cannot
-- disagree with the matchers. A silence ended early (DELETE) keeps its row: ends_at moves
-- to the moment it was ended, and ended_by says who ended it.
CREATE TABLE silences (
    id          uuid PRIMARY KEY,
    site        text NOT NULL DEFAULT '*',
    source      text NOT NULL DEFAULT '*',
    kind        text NOT NULL DEFAULT '*',
    source_type text NOT NULL DEFAULT '*' CHECK (source_type IN ('*', 'camera', 'sensor', 'site')),
    site_like   text GENERATED ALWAYS AS (replace(replace(replace(replace(
                    site, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')) STORED,
    source_like text GENERATED ALWAYS AS (replace(replace(replace(replace(
                    source, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')) STORED,
    kind_like   text GENERATED ALWAYS AS (replace(replace(replace(replace(
                    kind, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%')) STORED,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at >= starts_at),
    comment     text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL,
    ended_by    text,
    ended_at    timestamptz
);
CREATE INDEX silences_ends ON silences (ends_at);
CREATE INDEX silences_created ON silences (created_at DESC, id DESC);
