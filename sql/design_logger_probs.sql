-- Logger $logger's distribution per (context, action) from `action_probs`: the sum over its rows
-- in that context and the number of those rows (mean = prob_sum / rows).
WITH logged AS (
    SELECT context_id, action_probs
    FROM events
    WHERE logger = $logger AND action_probs IS NOT NULL
),
per_context AS (
    SELECT context_id, count(*) AS rows FROM logged GROUP BY context_id
),
probs AS (
    SELECT context_id, generate_subscripts(action_probs, 1) - 1 AS action, unnest(action_probs) AS prob
    FROM logged
)
SELECT p.context_id, p.action, sum(p.prob) AS prob_sum, any_value(c.rows) AS rows
FROM probs AS p
JOIN per_context AS c ON p.context_id IS NOT DISTINCT FROM c.context_id
GROUP BY p.context_id, p.action;
