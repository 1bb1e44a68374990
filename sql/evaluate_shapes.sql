-- `mval evaluate`: what the chosen rows carry, in one scan: how many rows, the lengths of their
-- action_probs (NULL when no row has them) and how many rows have a features vector, of which lengths.
SELECT
    count(*)               AS rows,
    min(len(action_probs)) AS action_probs_min,
    max(len(action_probs)) AS action_probs_max,
    count(features)        AS rows_with_features,
    min(len(features))     AS features_min,
    max(len(features))     AS features_max
FROM events
WHERE $all_loggers OR list_contains(CAST($loggers AS VARCHAR[]), logger);
