-- The audit log is append-only. Two locks, for two kinds of deployment:
--
-- 1. A trigger refuses UPDATE, DELETE and TRUNCATE on audit_log, whoever asks (the table's
--    owner included, unless it first disables the trigger: a deliberate, visible act).
--    Retention drops whole partitions (DROP TABLE fires no row trigger): the only way an
--    audit row goes.
-- 2. Where vigie runs as an application role that does not own the tables (migrations and
--    retention run as the owner; see the README), that role gets no UPDATE, DELETE or
--    TRUNCATE grant on audit_log at all. The role is named vigie_app; when it exists, its
--    privileges are set here.

CREATE FUNCTION vigie_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION vigie_audit_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION vigie_audit_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigie_app') THEN
        EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public '
                'TO vigie_app';
        EXECUTE 'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO vigie_app';
        EXECUTE 'REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM vigie_app';
        -- Tables of later migrations, made by the same owner (the audit's partitions too:
        -- their cloned trigger still refuses an UPDATE or DELETE sent to them directly).
        EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA public '
                'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO vigie_app';
        EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA public '
                'GRANT USAGE, SELECT ON SEQUENCES TO vigie_app';
    END IF;
END
$$;
