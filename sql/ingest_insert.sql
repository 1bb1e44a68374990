-- Move validated staged rows into `events`: `staged_new`, the staged rows to add (all of them, or those
-- whose event id is not stored yet) numbered 1.. in file order as `_seq`. $first_event: next free
-- event_id; $ingest_id; $logger.
INSERT INTO events
SELECT
    $first_event + _seq - 1,
    $ingest_id,
    $logger,
    context_id,
    features,
    CAST(action AS INTEGER),
    propensity,
    reward,
    action_probs,
    CAST(position AS INTEGER),
    ts,
    source_event_id
FROM staged_new;
