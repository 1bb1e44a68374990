-- `context_key(context_id, position, in_context)`: the context that `mval evaluate --positions context`
-- looks policies up by: `context_id|position`, just the position when context_id is NULL (and
-- `context_id|` when position is NULL). The text after the last '|' is always the position, so two
-- different (context_id, position) never share a key; concat_ws would drop a NULL and make ('a|1', NULL)
-- and ('a', 1), or (NULL, 2) and ('2', NULL), one context. Without in_context: context_id.
CREATE OR REPLACE TEMP MACRO context_key(context_id, position, in_context) AS CASE
    WHEN NOT in_context THEN context_id
    WHEN context_id IS NULL THEN CAST(position AS TEXT)
    ELSE context_id || '|' || coalesce(CAST(position AS TEXT), '')
END;
