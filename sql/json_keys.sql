-- The top-level keys of a JSON file's objects (JSON lines or one array), to refuse keys that DuckDB's reader
-- would confuse: one spelling per row, in order of first appearance, with the object (1-based, in file
-- order) that first has it, and `repeated`: the first object that holds it twice (or NULL). Every object is
-- read (the reader's own schema comes from a sample), grouped by its list of keys first: a file has few.
-- Non-objects (scalars, lists) have no keys.
WITH key_lists AS (
    SELECT names, min(object) AS object
    FROM (SELECT row_number() OVER () AS object, json_keys(json) AS names
          FROM read_json_objects($path, format = 'auto'))
    GROUP BY names
),
spelled AS (
    SELECT object, unnest(names) AS key, generate_subscripts(names, 1) AS place
    FROM key_lists
),
per_list AS (
    SELECT key, object, min(place) AS place, count(*) AS copies
    FROM spelled
    GROUP BY key, object
)
SELECT key, min(object) AS first_object, min(object) FILTER (WHERE copies > 1) AS repeated
FROM per_list
GROUP BY key
ORDER BY min(object), arg_min(place, object);
