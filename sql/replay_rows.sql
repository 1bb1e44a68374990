-- Rows of one logger for `mval simulate --replay`: a context key, the action, reward and propensity.
-- $context: 'context_id', 'position' or 'none' (one context).
SELECT
    CASE $context
        WHEN 'context_id' THEN coalesce(context_id, '')
        WHEN 'position' THEN coalesce(CAST(position AS TEXT), '')
        ELSE ''
    END AS context_key,
    action,
    reward,
    propensity
FROM events
WHERE logger = $logger
ORDER BY event_id;
