-- `mval evaluate`: a logger's policy read from its rows' action_probs, one row per context key.
-- variants > 1: the logger's distribution is not a function of the context key.
SELECT
    context_key(context_id, position, $position_in_context) AS context_key,  -- sql/context_key.sql
    count(DISTINCT action_probs) AS variants,
    any_value(action_probs)      AS probs
FROM events
WHERE logger = $logger AND action_probs IS NOT NULL
GROUP BY ALL;
