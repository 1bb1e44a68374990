-- Move validated staged rows into `events`. $first_event: next free event_id; $ingest_id; $logger.
INSERT INTO events
SELECT
    $first_event + _row - 1,
    $ingest_id,
    $logger,
    context_id,
    features,
    CAST(action AS INTEGER),
    propensity,
    reward,
    action_probs,
    CAST(position AS INTEGER),
    ts
FROM staged;
