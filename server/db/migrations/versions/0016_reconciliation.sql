-- Revision 0016 (reconciliation): the triggers it adds, as it loads them; frozen, as the revision is
-- (server/db/invariants.sql describes the head revision).

CREATE TRIGGER report_chunks_append_only BEFORE UPDATE OR DELETE ON report_chunks
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER report_chunks_no_truncate BEFORE TRUNCATE ON report_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

CREATE TRIGGER report_rows_append_only BEFORE UPDATE OR DELETE ON report_rows
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TRIGGER report_rows_no_truncate BEFORE TRUNCATE ON report_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
