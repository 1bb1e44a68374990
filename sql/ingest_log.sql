-- Ingested files, with the columns each gathered into `features` (NULL: a list column, none, or an
-- ingest before schema version 4). The view's query only: `mval init` and the upgrade of an older store
-- create it (a temporary view when the store is opened read-only).
SELECT ingest_id, logger, format, rows, path, ingested_at, feature_columns
FROM ingests
ORDER BY ingest_id
