-- The events of each ingest with identical (context_id, position, action, propensity, reward)
-- counted once: what `mval evaluate` and `mval design` read instead of scanning `events`.
-- Written by `mval ingest` in the same transaction as the events (sql/event_cells.sql). New in schema
-- version 2: `mval.store` adds it to a version-1 store.
CREATE TABLE event_cells (
    ingest_id    INTEGER NOT NULL,
    context_id   TEXT,
    position     INTEGER,
    action       INTEGER NOT NULL,
    propensity   DOUBLE NOT NULL,
    reward       DOUBLE NOT NULL,
    rows         BIGINT NOT NULL
);
