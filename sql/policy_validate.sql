-- Problems in a staged policy table `staged_policy(context_id, action, prob, _action_text, _prob_text)`
-- (the last two: the file's text of action and prob, to show a value that is not a number), worst first.
-- One row per problem: what, the context it is in, and the value found.
WITH checks AS (
    SELECT 'action must be a non-negative integer (at most 2147483647)' AS problem, context_id,
        coalesce(printf('%.15g', action), _action_text, 'missing') AS found
    FROM staged_policy WHERE action IS NULL OR NOT isfinite(action) OR action < 0 OR action <> floor(action)
        OR action > 2147483647
    UNION ALL
    SELECT 'prob must be in [0, 1]', context_id, coalesce(CAST(prob AS TEXT), _prob_text, 'missing')
    FROM staged_policy WHERE prob IS NULL OR isnan(prob) OR prob < 0 OR prob > 1
    UNION ALL
    -- 1e-6 per row: probabilities rounded to 6 decimals pass (each is off by at most 5e-7)
    SELECT 'probabilities of a context must sum to 1 (within 1e-6 per row)', context_id, printf('%.10g', sum(prob))
    FROM staged_policy GROUP BY context_id HAVING abs(sum(prob) - 1) > 1e-6 * count(*)
    UNION ALL
    SELECT 'each (context_id, action) must appear once', context_id,
        'action ' || printf('%.15g', action) || ' in ' || count(*) || ' rows'
    FROM staged_policy GROUP BY context_id, action HAVING count(*) > 1
    UNION ALL
    SELECT 'rows with an empty context_id (the same distribution in every context) cannot be mixed with '
        || 'rows that name contexts', NULL, count(*) FILTER (WHERE context_id IS NULL) || ' rows without one'
    FROM staged_policy
    HAVING count(*) FILTER (WHERE context_id IS NULL) > 0 AND count(*) FILTER (WHERE context_id IS NOT NULL) > 0
    UNION ALL
    SELECT 'a policy needs at least one (context_id, action, prob) row', NULL, 'no rows'
    FROM staged_policy HAVING count(*) = 0
)
SELECT * FROM checks LIMIT 5;
