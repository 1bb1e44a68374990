-- mval store schema, version 5, with event_cells_table.sql, views.sql and ingest_log.sql. Applied by `mval init` in one transaction.
CREATE TABLE mval_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE SEQUENCE ingest_id_seq START 1;

-- One row per ingested file: ingesting the same content twice adds nothing.
-- feature_columns: the file columns gathered into events.features, in vector order (--features, or the
-- affinity columns of --format obd); NULL when features came from one list column, or there are none, and
-- for ingests before version 4. An ingest that gathers other names than an earlier one's is refused.
-- source_columns: the file column each store column was read from (--map, or the --format's layout;
-- a gathered `features` is in feature_columns); NULL for ingests before version 5. With `format` and
-- feature_columns it is how the file was read: the same content read another way is refused.
CREATE TABLE ingests (
    ingest_id    INTEGER PRIMARY KEY,
    path         TEXT NOT NULL,
    content_hash TEXT NOT NULL UNIQUE,
    format       TEXT NOT NULL,
    logger       TEXT NOT NULL,
    rows         BIGINT NOT NULL,  -- events added (rows of the file already stored are not counted)
    first_event  BIGINT NOT NULL,
    ingested_at  TIMESTAMP NOT NULL DEFAULT current_localtimestamp(),
    feature_columns TEXT[],
    source_columns MAP(TEXT, TEXT)
);

-- One row per logged interaction. event_id is dense and increasing in ingest order; source_event_id is
-- the file's own event id (as text), NULL when the file has none: with it, an event already stored for
-- the same logger is not added again.
CREATE TABLE events (
    event_id     BIGINT NOT NULL,
    ingest_id    INTEGER NOT NULL,
    logger       TEXT NOT NULL,
    context_id   TEXT,
    features     DOUBLE[],
    action       INTEGER NOT NULL,
    propensity   DOUBLE NOT NULL,
    reward       DOUBLE NOT NULL,
    action_probs DOUBLE[],
    position     INTEGER,
    ts           TIMESTAMP,
    source_event_id TEXT
);

-- Policies in long format: target, logging and designed policies.
-- context_id NULL means "every context" (a context-free policy).
CREATE TABLE policies (
    policy     TEXT NOT NULL,
    context_id TEXT,
    action     INTEGER NOT NULL,
    prob       DOUBLE NOT NULL
);

-- Training examples of a dataset (attribution side).
CREATE TABLE examples (
    dataset    TEXT NOT NULL,
    example_id TEXT NOT NULL,
    prompt     TEXT,
    response   TEXT,
    text       TEXT,
    source     TEXT,
    position   BIGINT NOT NULL,
    record     TEXT,   -- the input line's JSON object (extra fields, id type, key order): what curate writes
    PRIMARY KEY (dataset, example_id)
);

-- Attribution scores, one per (dataset, example, method, concept).
CREATE TABLE scores (
    dataset    TEXT NOT NULL,
    example_id TEXT NOT NULL,
    method     TEXT NOT NULL,
    concept    TEXT NOT NULL,
    score      DOUBLE NOT NULL,
    scored_at  TIMESTAMP NOT NULL DEFAULT current_localtimestamp(),
    PRIMARY KEY (dataset, example_id, method, concept)
);

-- What produced the scores of one (dataset, method, concept): a rerun with another model, concept
-- file, query set or settings is refused instead of silently mixing scores.
CREATE TABLE score_runs (
    dataset     TEXT NOT NULL,
    method      TEXT NOT NULL,
    concept     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    settings    TEXT NOT NULL,
    started_at  TIMESTAMP NOT NULL DEFAULT current_localtimestamp(),
    PRIMARY KEY (dataset, method, concept)
);
