-- The staged rows of a file with event ids that `events` does not hold yet (not in `staged_known`,
-- sql/ingest_known_events.sql), numbered 1.. in file order as `_seq` for sql/ingest_insert.sql.
CREATE OR REPLACE TEMP VIEW staged_new AS
SELECT *, row_number() OVER (ORDER BY _row) AS _seq
FROM staged ANTI JOIN staged_known USING (_row);
