-- Everyday questions, one view each: `mval query STORE "SELECT * FROM logger_summary"`.

-- Per logger: rows, mean reward, propensity range, number of distinct actions and contexts.
CREATE VIEW logger_summary AS
SELECT
    logger,
    count(*)                   AS rows,
    avg(reward)                AS reward_mean,
    min(propensity)            AS propensity_min,
    max(propensity)            AS propensity_max,
    count(DISTINCT action)     AS actions_seen,
    max(action) + 1            AS n_actions,
    count(DISTINCT context_id) AS contexts
FROM events
GROUP BY logger
ORDER BY logger;

-- Per logger and action: how often it was logged and what it earned.
CREATE VIEW action_summary AS
SELECT
    logger,
    action,
    count(*)        AS rows,
    avg(reward)     AS reward_mean,
    avg(propensity) AS propensity_mean
FROM events
GROUP BY logger, action
ORDER BY logger, action;

-- Per policy: contexts, actions and the worst row-sum deviation from 1.
CREATE VIEW policy_summary AS
SELECT
    policy,
    count(DISTINCT context_id) AS contexts,
    max(action) + 1            AS n_actions,
    count(*)                   AS rows
FROM policies
GROUP BY policy
ORDER BY policy;

-- Ingested files: `ingest_log`, in sql/ingest_log.sql (an older store gets it anew when upgraded).
