import re

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from mval.commands.simulate import simulate
from mval.environments import file_env, sklearn_env, synthetic_env
from mval.errors import MvalError
from mval.simulate import DESIGNS, run_experiment, summarise, true_variance

REPS = 80


def assert_actions_follow(policy: np.ndarray, ctx: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Per context, the drawn action frequencies equal `policy` within 4 standard errors; returns counts."""
    counts = np.zeros(policy.shape)
    np.add.at(counts, (ctx, action), 1)
    freq = counts / counts.sum(axis=1, keepdims=True)
    se = np.sqrt(policy * (1 - policy) / counts.sum(axis=1, keepdims=True))
    assert (np.abs(freq - policy) < 4 * se + 1e-12).all()
    return counts


@pytest.fixture(scope="module")
def tiny():
    env = synthetic_env(contexts=20, actions=3, dim=2, overlap=0.5, seed=3)
    records = run_experiment(env, 300, [100, 400], reps=REPS, seed=1, workers=2)
    return env, records, summarise(env, 300, records, n_boot=300)


def test_true_value_matches_monte_carlo():
    env = sklearn_env("iris", noise=0.1)
    _, _, reward = env.draw(env.target, 400_000, np.random.default_rng(0))
    se = reward.std() / np.sqrt(len(reward))
    assert abs(reward.mean() - env.true_value) < 3 * se


def test_draw_follows_the_policy():
    env = synthetic_env(contexts=5, actions=4, seed=0)
    ctx, action, _ = env.draw(env.logger, 200_000, np.random.default_rng(1))
    assert_actions_follow(env.logger, ctx, action)


def test_every_design_budget_and_estimator_is_recorded(tiny):
    _, records, summaries = tiny
    assert len(records) == REPS * 2 * 2 * len(DESIGNS)
    assert {(s.design, s.budget, s.estimator) for s in summaries} == {
        (d, b, e) for d in DESIGNS for b in (100, 400) for e in ("balanced-ips", "balanced-dr")
    }


@pytest.mark.parametrize("design", ["target", "uniform", "pi0"])
def test_fixed_designs_are_unbiased_and_match_the_variance_formula(tiny, design):
    env, records, summaries = tiny
    for s in summaries:
        if s.design != design or s.estimator != "balanced-ips":
            continue
        pi1 = {"target": env.target, "uniform": np.full_like(env.target, 1 / 3), "pi0": env.logger}[design]
        assert s.oracle_std == pytest.approx(np.sqrt(true_variance(env, 300, s.budget, pi1, "ips")))
        assert abs(s.bias) < 3 * s.empirical_std / np.sqrt(s.reps)
        # the sample std of `reps` errors has relative standard error about 1 / sqrt(2 (reps - 1))
        assert abs(s.empirical_std / s.oracle_std - 1) < 3 / np.sqrt(2 * (s.reps - 1))


def test_rounds_to_match_mval_is_the_budget_for_mval_itself(tiny):
    _, _, summaries = tiny
    for s in summaries:
        if s.design == "mval":
            assert s.rounds_to_match_mval == pytest.approx(s.budget, rel=1e-6)
        if s.design in ("uniform", "pi0") and s.estimator == "balanced-ips":
            assert s.rounds_to_match_mval > s.budget


def test_parallel_and_serial_runs_agree():
    env = synthetic_env(contexts=10, actions=3, dim=2, seed=0)
    serial = run_experiment(env, 100, [50], reps=4, seed=7, workers=1)
    parallel = run_experiment(env, 100, [50], reps=4, seed=7, workers=2)
    assert pl.DataFrame(serial).equals(pl.DataFrame(parallel))


def test_cli_json_and_plot(tmp_path):
    out = CliRunner().invoke(simulate, ["--env", "iris", "--n0", "150", "--budget", "50,200", "--reps", "6",
                                        "--workers", "1", "--plot", str(tmp_path / "rmse.png"), "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = pl.read_json(out.output.encode())
    assert {"design", "budget", "estimator", "rmse", "bias", "empirical_std", "predicted_std"} <= set(rows.columns)
    assert rows.height == 2 * 2 * len(DESIGNS)
    assert (tmp_path / "rmse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_file_env_reads_a_labelled_table(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 3))
    pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(int) + (x[:, 1] > 1)}).write_csv(
        tmp_path / "d.csv")
    env = file_env(tmp_path / "d.csv", "y")
    assert (env.n_contexts, env.n_actions) == (90, 3)
    assert env.true_value > 0.5  # the strong classifier is right most of the time


@pytest.mark.parametrize(
    "args, match",
    [
        (["--budget", "10,x"], "--budget 10,x: give whole numbers"),
        (["--budget", "0"], "every budget must be >= 1"),
        (["--data", "nope.csv", "--label", "y"], "nope.csv: no such file"),
        (["--data", "{tmp}/d.csv"], "--data needs --label"),
        (["--data", "{tmp}/d.csv", "--label", "z"], "no column 'z' for --label"),
        (["--noise", "0.7", "--env", "iris"], "--noise 0.7: must be in"),
        (["--overlap", "2"], "--overlap 2.0: must be in"),
    ],
)
def test_bad_input_exit_2(tmp_path, args, match):
    from cli import main

    pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1]}).write_csv(tmp_path / "d.csv")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(main, ["simulate", "--reps", "2", *args])
    assert result.exit_code == 2, result.output
    assert match in result.output


def test_file_env_refuses_missing_values(tmp_path):
    pl.DataFrame({"x": [1.0, None, 3.0], "y": [0, 1, 0]}).write_csv(tmp_path / "m.csv")
    with pytest.raises(MvalError, match="missing values"):
        file_env(tmp_path / "m.csv", "y")


def _uniform_store(store, tmp_path, rows=6000, k=4, propensity=None, reward=None):
    from mval.ingest import ingest_file
    from mval.store import open_store

    rng = np.random.default_rng(0)
    ctx = rng.integers(3, size=rows)
    action = rng.integers(k, size=rows)
    true_m = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.1, 0.1], [0.2, 0.2, 0.6, 0.2]])
    frame = pl.DataFrame({
        "context_id": [f"c{c}" for c in ctx], "action": action,
        "propensity": np.full(rows, 1 / k) if propensity is None else propensity,
        "reward": (rng.random(rows) < true_m[ctx, action]).astype(float) if reward is None else reward,
    })
    frame.write_parquet(tmp_path / "u.parquet")
    with open_store(store) as con:
        ingest_file(con, tmp_path / "u.parquet", "uniform")
    return frame


def test_replay_draws_follow_the_policy_and_truth_is_the_empirical_world(store, tmp_path):
    from mval.environments import replay_from_store
    from mval.store import open_store

    frame = _uniform_store(store, tmp_path)
    with open_store(store, read_only=True) as con:
        env = replay_from_store(con, "uniform")
    cells = frame.group_by("context_id", "action").agg(pl.col("reward").mean(), pl.len()).sort("context_id", "action")
    np.testing.assert_allclose(env.mean_reward.ravel(), cells["reward"].to_numpy())
    np.testing.assert_allclose(env.weights, frame["context_id"].value_counts().sort("context_id")["count"] / 6000)
    ctx, action, reward = env.draw(env.target, 100_000, np.random.default_rng(2))
    counts = assert_actions_follow(env.target, ctx, action)
    np.testing.assert_allclose(counts.sum(axis=1) / 100_000, env.weights, atol=0.01)
    assert abs(reward.mean() - env.true_value) < 3 * reward.std() / np.sqrt(len(reward))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"propensity": np.full(6000, 0.5)}, "needs rows from a uniform-random logger over 4 actions"),
        ({"reward": np.full(6000, 0.5)}, "replay needs 0/1 rewards"),
    ],
)
def test_replay_refuses_non_uniform_or_non_binary_logs(store, tmp_path, kwargs, match):
    from mval.environments import replay_from_store
    from mval.store import open_store

    _uniform_store(store, tmp_path, **kwargs)
    with open_store(store, read_only=True) as con, pytest.raises(MvalError, match=match):
        replay_from_store(con, "uniform")


def test_replay_with_unlogged_cells_draws_every_design_exactly_and_stays_unbiased():
    """Context 1 never logged action 2: every design is kept to the logged cells (uniform is uniform over
    actions 0 and 1 there), draws follow it with the right context mix, and Balanced IPS stays unbiased."""
    from mval.environments import replay_env
    from mval.simulate import design_policies

    rng = np.random.default_rng(4)
    ctx = rng.choice(2, size=3000, p=[0.6, 0.4])
    action = rng.integers(3, size=3000)
    keep = ~((ctx == 1) & (action == 2))
    ctx, action = ctx[keep], action[keep]
    reward = (rng.random(ctx.size) < np.array([[0.2, 0.5, 0.7], [0.6, 0.1, 0.0]])[ctx, action]).astype(float)
    env = replay_env(ctx, action, reward, np.full(ctx.size, 1 / 3))
    designs = design_policies(env, env.mean_reward, 200, 200)
    assert designs["uniform"][1] == pytest.approx([0.5, 0.5, 0.0])
    for pi1 in designs.values():
        assert (pi1[~env.support] == 0).all() and np.allclose(pi1.sum(axis=1), 1)
    c, a, _ = env.draw(designs["uniform"], 40_000, np.random.default_rng(5))
    assert_actions_follow(designs["uniform"], c, a)
    np.testing.assert_allclose(np.bincount(c) / c.size, env.weights, atol=0.01)
    with pytest.raises(ValueError, match="cells with no logged rows"):
        env.draw(np.full((2, 3), 1 / 3), 10, np.random.default_rng(0))
    records = run_experiment(env, 200, [200], reps=200, seed=2, workers=1)
    for s in summarise(env, 200, records, n_boot=50):
        if s.estimator == "balanced-ips":
            assert abs(s.bias) < 3 * s.empirical_std / np.sqrt(s.reps), s.design


def test_file_env_refuses_a_text_feature_column(tmp_path):
    """A stray "N/A" makes a feature column text; it used to be dropped from the features without a word."""
    (tmp_path / "t.csv").write_text("x,z,y\n1.0,0.5,0\n2.0,N/A,1\n3.0,0.7,0\n")
    with pytest.raises(MvalError, match=r"t.csv: row 2, column 'z': not a number \('N/A'\); every column but --label 'y'"):
        file_env(tmp_path / "t.csv", "y")


def test_file_env_reads_a_boolean_feature_as_0_or_1(tmp_path):
    flag = [True, False, True, False] * 5
    frame = pl.DataFrame({"x": np.linspace(0, 1, 20), "flag": flag, "y": [0, 1] * 10})
    frame.write_parquet(tmp_path / "b.parquet")  # it said "row 1, column 'flag': not a number (True)"
    frame.with_columns(pl.col("flag").cast(pl.Float64)).write_parquet(tmp_path / "f.parquet")
    booleans, numbers = file_env(tmp_path / "b.parquet", "y"), file_env(tmp_path / "f.parquet", "y")
    np.testing.assert_array_equal(booleans.features, numbers.features)
    np.testing.assert_array_equal(booleans.mean_reward, numbers.mean_reward)


def _labelled(rows: int) -> str:
    return "x,y\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(rows))


# the files that `mval ingest` and `mval policy add` refuse, refused alike by the reader simulate --data needs
BAD_DATA = [
    ("d.csv", _labelled(40) + "3,1,9\n", r"d.csv: line 42 has 3 fields, the header 2; give every line one field"),
    ("d.csv", "x,y\n1,0\n2\n" + _labelled(40)[4:], r"d.csv: line 3 has 1 field, the header 2; "),
    ("d.csv", _labelled(30_000) + "3,1,9\n", r"d.csv: line 30002 has 3 fields, the header 2; "),  # past the sample
    ("d.csv", "x,y,X\n" + "1,0,2\n" * 40, r"d.csv: column 'X' appears twice \(columns 1 and 3, the first spelled 'x'"),
    ("d.jsonl", '{"x": 1, "y": 0}\n' * 40 + '{"X": 1, "y": 1}\n',
     r"d.jsonl: keys 'x' and 'X' differ only in case \(objects 1 and 41; "),
    ("d.jsonl", "", r"d.jsonl: the file is empty \(0 bytes\)"),
]


@pytest.mark.parametrize("name, text, match", BAD_DATA)
def test_the_shared_reader_refuses_what_ingest_refuses(tmp_path, name, text, match):
    from mval.files import read_frame

    (tmp_path / name).write_text(text)
    with pytest.raises(MvalError, match=match):
        read_frame(tmp_path / name)


@pytest.mark.parametrize("name, text, match", BAD_DATA)
def test_simulate_data_refuses_what_ingest_refuses(tmp_path, name, text, match):
    from cli import main

    (tmp_path / name).write_text(text)
    result = CliRunner().invoke(main, ["simulate", "--data", str(tmp_path / name), "--label", "y", "--reps", "2"])
    assert result.exit_code == 2, result.output
    assert re.search(f"^Error: .*{match}", result.output), result.output


def test_the_shared_reader_types_a_column_by_every_value_not_a_sample(tmp_path):
    """DuckDB's reader types a column from its first 20,480 rows and would read this 1.5 as 2."""
    from mval.files import read_frame

    (tmp_path / "d.csv").write_text("x,flag,name,y\n" + "".join(f"{i},true,n{i},{i % 2}\n" for i in range(30_000))
                                    + "1.5,false,,1\n")
    (tmp_path / "d.jsonl").write_text("".join(f'{{"x": {i}, "y": {i % 2}}}\n' for i in range(30_000))
                                      + '{"x": 1.5, "y": 1}\n')
    frame = read_frame(tmp_path / "d.csv")
    assert frame.schema == pl.Schema({"x": pl.Float64, "flag": pl.Boolean, "name": pl.String, "y": pl.Int64})
    assert frame.row(-1) == (1.5, False, None, 1)
    assert read_frame(tmp_path / "d.jsonl").row(-1) == (1.5, 1)
    (tmp_path / "h.csv").write_text("x,y\n")  # no values: numbers, so that the label's classes are what is missing
    assert read_frame(tmp_path / "h.csv").schema == pl.Schema({"x": pl.Int64, "y": pl.Int64})


def test_read_frame_keeps_19_digit_integers_exact_and_text_columns_as_text(tmp_path):
    """A 19-digit integer was read as a float: 1234567890123456789 and ...788 became one value."""
    from mval.files import read_frame

    (tmp_path / "d.csv").write_text("id,label,x\n007,1234567890123456789,1\n008,1234567890123456788,2\n")
    frame = read_frame(tmp_path / "d.csv", text=("id",))
    assert frame["label"].to_list() == [1234567890123456789, 1234567890123456788]
    assert frame["id"].to_list() == ["007", "008"] and frame["x"].to_list() == [1, 2]


def test_the_old_and_new_rows_reward_models_ignore_the_features_units():
    """m_hat (for the new rows and the design) was fitted on raw features, the cross-fitted q of the old rows on
    scaled ones: the L2 penalty shrank them differently, which biased Balanced DR differently per design.
    Both are now fitted on scaled features, so neither depends on the units of a feature."""
    from dataclasses import replace

    from mval.simulate import fit_reward_model

    env = synthetic_env(contexts=30, actions=3, dim=2, overlap=0.5, seed=4)
    rng = np.random.default_rng(2)
    ctx, a, r = env.draw(env.logger, 400, rng)
    q_rows, m_hat = fit_reward_model(env, ctx, a, r, seed=0)
    rescaled = replace(env, features=env.features * [1000.0, 0.001])
    q_rows2, m_hat2 = fit_reward_model(rescaled, ctx, a, r, seed=0)
    np.testing.assert_allclose(q_rows2, q_rows, atol=1e-6)
    np.testing.assert_allclose(m_hat2, m_hat, atol=1e-6)


def test_replay_counts_a_uniform_logger_action_that_never_came_up(store, tmp_path):
    """Propensity 1/5 with actions 0-3 logged: the action count came from the largest logged action (4), so the
    log was refused as not uniform. The fifth action has no rows, so every design is kept off it."""
    from mval.environments import replay_from_store
    from mval.store import open_store

    _uniform_store(store, tmp_path, propensity=np.full(6000, 0.2))
    with open_store(store, read_only=True) as con:
        env = replay_from_store(con, "uniform")
    assert env.n_actions == 5 and np.all(env.restrict(np.full((3, 5), 0.2))[:, 4] == 0)
    ctx, action, reward = env.draw(env.target, 20_000, np.random.default_rng(1))
    assert action.max() <= 3 and abs(reward.mean() - env.true_value) < 3 * reward.std() / np.sqrt(len(reward))
