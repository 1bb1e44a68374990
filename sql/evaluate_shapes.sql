-- `mval evaluate`: what the chosen rows carry, in one scan: how many rows, the lengths of their
-- action_probs (NULL when no row has them) and how many rows have a features vector, of which lengths.
-- $lengths = false skips the lengths (a cheaper scan of the validity masks only) when no row has a list.
SELECT
    count(*)                                         AS rows,
    count(action_probs)                              AS rows_with_action_probs,
    count(features)                                  AS rows_with_features,
    CASE WHEN $lengths THEN min(len(action_probs)) END AS action_probs_min,
    CASE WHEN $lengths THEN max(len(action_probs)) END AS action_probs_max,
    CASE WHEN $lengths THEN min(len(features)) END     AS features_min,
    CASE WHEN $lengths THEN max(len(features)) END     AS features_max
FROM events
WHERE $all_ingests OR list_contains(CAST($ingest_ids AS INTEGER[]), ingest_id);
