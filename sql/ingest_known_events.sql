-- The staged rows whose event id (and position: one id may name a slate) the store already holds for
-- $logger, with the stored event and `differs`: the first stored column whose value is not the file's
-- (NULL vs NULL counts as equal), or NULL when the row is the same event, already there, and is
-- skipped. Every stored column but the store's own bookkeeping (event_id, ingest_id) is compared.
CREATE OR REPLACE TEMP TABLE staged_known AS
SELECT
    s._row,
    s.source_event_id,
    e.event_id AS stored_event,
    e.ingest_id AS stored_ingest,
    CASE
        WHEN s.context_id IS DISTINCT FROM e.context_id                     THEN 'context_id'
        WHEN CAST(s.action AS INTEGER) IS DISTINCT FROM e.action             THEN 'action'
        WHEN s.propensity IS DISTINCT FROM e.propensity                     THEN 'propensity'
        WHEN s.reward IS DISTINCT FROM e.reward                             THEN 'reward'
        WHEN s.ts IS DISTINCT FROM e.ts                                     THEN 'ts'
        WHEN s.features IS DISTINCT FROM e.features                         THEN 'features'
        WHEN s.action_probs IS DISTINCT FROM e.action_probs                 THEN 'action_probs'
    END AS differs
FROM staged AS s
JOIN events AS e ON e.source_event_id = s.source_event_id AND e.logger = $logger
    AND e.position IS NOT DISTINCT FROM CAST(s.position AS INTEGER);
