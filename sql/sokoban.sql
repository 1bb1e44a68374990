-- Sokoban agent episodes (`mval sokoban play --store`): one row per level and run.
-- Created on demand by attribution/sokoban/play.py; e.g. solve rate by solution length:
--   SELECT optimal_length, avg(solved::INT) FROM sokoban_episodes GROUP BY 1 ORDER BY 1;
CREATE TABLE IF NOT EXISTS sokoban_episodes (
    run_id         TEXT NOT NULL,
    agent          TEXT NOT NULL,
    level_file     TEXT NOT NULL,
    level_index    INTEGER NOT NULL,
    level          TEXT NOT NULL,
    optimal_length INTEGER,
    thinking_steps INTEGER NOT NULL,
    max_steps      INTEGER NOT NULL,
    solved         BOOLEAN NOT NULL,
    steps          INTEGER NOT NULL,
    return         DOUBLE NOT NULL,
    actions        TEXT NOT NULL,
    played_at      TIMESTAMP NOT NULL DEFAULT current_localtimestamp(),
    PRIMARY KEY (run_id, level_index)
);

-- Training levels as an attribution dataset (`mval sokoban dataset RUN --store S --dataset levels`) live
-- in the core `examples` table: example_id = 'lv-' || hash of the level text, prompt = the level
-- (Boxoban text), response = the episode as JSON (moves, taught actions, rewards). E.g. the levels whose
-- demonstrations push the agent hardest towards a concept, with their length:
--   SELECT s.example_id, s.score, json_array_length(e.response::JSON -> 'actions') AS moves
--   FROM scores s JOIN examples e USING (dataset, example_id)
--   WHERE s.dataset = 'levels' AND s.method = 'gradient' ORDER BY s.score DESC LIMIT 10;
