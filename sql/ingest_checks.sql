-- One boolean per rule over the staged rows of an ingest (`staged`, typed with TRY_CAST so that
-- unparseable values arrive as NULL). `mval ingest` counts each rule in one scan and, only when a
-- rule fails, looks up the first failing row for the error message.
CREATE OR REPLACE TEMP VIEW staged_checks AS
SELECT
    _row,
    len(features) AS features_len,
    action IS NULL OR action < 0 OR action <> floor(action) OR action > 2147483647 AS bad_action,
    propensity IS NULL OR isnan(propensity) OR propensity <= 0 OR propensity > 1  AS bad_propensity,
    reward IS NULL OR isnan(reward) OR isinf(reward)                              AS bad_reward,
    position IS NOT NULL AND (position < 0 OR position <> floor(position) OR position > 2147483647) AS bad_position,
    action_probs IS NOT NULL AND (
        len(action_probs) <= action
        OR list_min(action_probs) < 0
        OR abs(list_sum(action_probs) - 1) > 1e-6
        OR abs(action_probs[CAST(action AS BIGINT) + 1] - propensity) > 1e-6
    )                                                                             AS bad_action_probs,
    features IS NOT NULL AND list_bool_or([f IS NULL OR isnan(f) FOR f IN features]) AS bad_features,
    _ts_raw IS NOT NULL AND ts IS NULL                                            AS bad_ts
FROM staged;
