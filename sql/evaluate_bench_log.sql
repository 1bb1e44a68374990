-- benchmarks/evaluate.py: $rows events (ingest 1; the script adds its `ingests` row) from one uniform logger over $actions actions and $contexts contexts;
-- reward ~ Bernoulli(m(x, a)) with m from a hash of (context, action).
INSERT INTO events (event_id, ingest_id, logger, context_id, action, propensity, reward)
SELECT
    i,
    1,
    'uniform',
    'c' || CAST(x AS TEXT),
    a,
    1.0 / $actions,
    CAST(random() < 0.05 + 0.5 * ((hash(x * 131 + a) % 1000) / 1000.0) AS DOUBLE)
FROM (
    SELECT i, CAST(floor(random() * $contexts) AS INTEGER) AS x, CAST(floor(random() * $actions) AS INTEGER) AS a
    FROM range($rows) t(i)
);
