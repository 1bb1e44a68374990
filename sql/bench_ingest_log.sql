-- A synthetic log for benchmarks/ingest.py: $rows rows, 1,000 contexts, 10 actions, 4 features.
COPY (
    SELECT
        'c' || (i % 1000)                                   AS context_id,
        [sin(i), cos(i), (i % 7) / 7.0, (i % 13) / 13.0]    AS features,
        CAST(hash(i) % 10 AS INTEGER)                       AS action,
        0.1                                                 AS propensity,
        CAST(hash(i + 1) % 100 < 30 AS DOUBLE)              AS reward
    FROM range($rows) AS t(i)
) TO $path (FORMAT parquet);
