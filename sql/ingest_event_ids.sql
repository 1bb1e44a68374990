-- The file's own event ids (`staged.source_event_id`, only when the file has an event id column), in
-- one scan: rows without an id (missing or blank), and rows whose id and position an earlier row of the
-- file already has (one id may name a slate: its rows differ by position), with the first such row,
-- its id and the row that had it first.
WITH ids AS (
    SELECT
        _row,
        source_event_id,
        source_event_id IS NULL OR trim(source_event_id) = '' AS missing,
        min(_row) OVER (PARTITION BY source_event_id, position) AS first_row
    FROM staged
)
SELECT
    count_if(missing)                                   AS missing,
    min(_row) FILTER (WHERE missing)                    AS missing_row,
    count_if(NOT missing AND _row > first_row)          AS repeated,
    min(_row) FILTER (WHERE NOT missing AND _row > first_row) AS repeated_row,
    arg_min(source_event_id, _row) FILTER (WHERE NOT missing AND _row > first_row) AS repeated_id,
    arg_min(first_row, _row) FILTER (WHERE NOT missing AND _row > first_row)       AS repeated_first_row
FROM ids;
