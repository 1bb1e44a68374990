-- One boolean per rule over the staged rows of an ingest (`staged`, typed with TRY_CAST so that
-- unparseable values arrive as NULL; `_<column>_raw` keeps the file's text of the optional parsed
-- columns, so a value that is there but does not parse is refused instead of stored as missing).
-- `mval ingest` counts each rule in one scan and, only when a rule fails, looks up the first
-- failing row for the error message (showing the file's text of the value where it has one).
-- `_text_ids`: the ids are the file's text (CSV, JSON), where a whole number written as a float (1.0,
-- as pandas writes an integer column with a missing value) would not match the 1 of another file
-- (`float_written_id`, sql/float_ids.sql, loaded first).
CREATE OR REPLACE TEMP VIEW staged_checks AS
SELECT
    _row,
    len(features) AS features_len,
    action IS NULL OR NOT isfinite(action) OR action < 0 OR action <> floor(action) OR action > 2147483647 AS bad_action,
    propensity IS NULL OR isnan(propensity) OR propensity <= 0 OR propensity > 1  AS bad_propensity,
    reward IS NULL OR isnan(reward) OR isinf(reward)                              AS bad_reward,
    CASE WHEN position IS NULL THEN _position_raw IS NOT NULL
         ELSE NOT isfinite(position) OR position < 0 OR position <> floor(position) OR position > 2147483647 END AS bad_position,
    CASE WHEN action_probs IS NULL THEN _action_probs_raw IS NOT NULL
         ELSE len(action_probs) <= action
              OR list_bool_or([p IS NULL OR NOT isfinite(p) OR p < 0 FOR p IN action_probs])
              OR abs(list_sum(action_probs) - 1) > 1e-6
              OR abs(action_probs[CAST(action AS BIGINT) + 1] - propensity) > 1e-6 END AS bad_action_probs,
    CASE WHEN features IS NULL THEN _features_raw IS NOT NULL
         ELSE list_bool_or([f IS NULL OR NOT isfinite(f) FOR f IN features]) END    AS bad_features,
    -- a list inside the list ([[1, 2], [3]], [1, [2]]) casts to NULL elements: say so (refused rows only)
    CASE WHEN bad_features THEN coalesce(regexp_matches(_features_raw, '^\s*\[[^\]]*\['), false)
         ELSE false END                                                           AS nested_features,
    _ts_raw IS NOT NULL AND ts IS NULL                                            AS bad_ts,
    _text_ids AND float_written_id(context_id)                                    AS float_context_id,
    _text_ids AND float_written_id(source_event_id)                               AS float_event_id
FROM staged;
