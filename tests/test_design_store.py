"""`design_logging_policy` and `mval design` on a real store, checked against numpy on the same rows."""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import as_ingested

from mval.commands.design import design
from mval.design import MvalProblem, balanced_variance, solve_exact
from mval.design_store import SHRINK_ROWS, design_logging_policy
from mval.errors import MvalError
from mval.policies import add_policy, load_policy
from mval.store import open_store

K = 3


def fill(store, tmp_path, rows=400, seed=0, with_probs=True, rewards=None):
    """Logger 'prod' (per-context distribution in action_probs), a contextual and a context-free target."""
    rng = np.random.default_rng(seed)
    ctx = rng.integers(4, size=rows)
    probs = rng.dirichlet(np.ones(K), size=4)
    action = (rng.random((rows, 1)) > np.cumsum(probs[ctx], axis=1)).sum(axis=1)
    reward = (rng.random(rows) < 0.2 + 0.2 * action).astype(float) if rewards is None else rewards
    with open_store(store) as con:
        con.execute(
            "INSERT INTO events SELECT i, 1, 'prod', 'c' || ctx, NULL, a, p, r, "
            "CASE WHEN ? THEN probs END, NULL, NULL, NULL FROM (SELECT unnest(?) AS i, unnest(?) AS ctx, "
            "unnest(?) AS a, unnest(?) AS p, unnest(?) AS r, unnest(?::DOUBLE[][]) AS probs)",
            [with_probs, list(range(rows)), ctx.tolist(), action.tolist(), probs[ctx, action].tolist(),
             reward.tolist(), probs[ctx].tolist()],
        )
        as_ingested(con, 1, "prod", rows)
        context_free = {"context_id": [None] * K, "action": range(K), "prob": [0.1, 0.2, 0.7]}
        pl.DataFrame(context_free).write_csv(tmp_path / "a.csv")
        pl.DataFrame({"context_id": np.repeat([f"c{i}" for i in range(4)], K), "action": np.tile(range(K), 4),
                      "prob": np.tile([0.6, 0.4, 0.0], 4)}).write_csv(tmp_path / "b.csv")
        add_policy(con, "A", tmp_path / "a.csv")
        add_policy(con, "B", tmp_path / "b.csv")
    return ctx, action, reward, probs


def test_matches_numpy_on_the_same_rows(store, tmp_path):
    ctx, action, reward, probs = fill(store, tmp_path)
    with open_store(store) as con:
        result = design_logging_policy(con, ["A"], 600)
    # independent estimates: frequencies, shrunk moments, pi0 = the logged distributions
    n = len(ctx)
    p = np.bincount(ctx, minlength=4) / n
    counts = np.zeros((4, K))
    r1, r2 = np.zeros((4, K)), np.zeros((4, K))
    np.add.at(counts, (ctx, action), 1)
    np.add.at(r1, (ctx, action), reward)
    np.add.at(r2, (ctx, action), reward**2)
    s_action = (r2.sum(0) + SHRINK_ROWS * reward.mean()) / (counts.sum(0) + SHRINK_ROWS)
    s = (r2 + SHRINK_ROWS * s_action) / (counts + SHRINK_ROWS)
    m_action = (r1.sum(0) + SHRINK_ROWS * reward.mean()) / (counts.sum(0) + SHRINK_ROWS)
    m = (r1 + SHRINK_ROWS * m_action) / (counts + SHRINK_ROWS)
    target = np.tile([0.1, 0.2, 0.7], (4, 1))
    expected = solve_exact(MvalProblem(target**2 * s, probs, n / (n + 600), p))
    got = result.policy.sort(["context_id", "action"])["prob"].to_numpy().reshape(4, K)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    variance = balanced_variance(target, [probs, expected], [n, 600], p, s, m)
    assert result.std_error == pytest.approx(np.sqrt(variance), rel=1e-9)
    assert result.expected_reward == pytest.approx(p @ (expected * m).sum(axis=1), rel=1e-12)
    by_name = {a.name: a for a in result.alternatives}
    assert by_name["target"].expected_reward == pytest.approx(p @ (target * m).sum(axis=1), rel=1e-12)
    assert by_name["pi0"].expected_reward == pytest.approx(p @ (probs * m).sum(axis=1), rel=1e-12)
    assert by_name["pi0"].std_error == pytest.approx(
        np.sqrt(balanced_variance(target, [probs, probs], [n, 600], p, s, m)), rel=1e-9)
    for alt in result.alternatives:  # MVAL beats each alternative, which needs more rounds to catch up
        assert alt.std_error >= result.std_error
        assert alt.rounds_needed >= 600
        if np.isfinite(alt.rounds_needed):
            pi = {"target": target, "uniform": np.full((4, K), 1 / K), "pi0": probs}.get(alt.name)
            if pi is not None:
                at = balanced_variance(target, [probs, pi], [n, alt.rounds_needed], p, s, m)
                before = balanced_variance(target, [probs, pi], [n, alt.rounds_needed - 1], p, s, m)
                assert at <= variance < before


def test_difference_dr_and_cvxpy_minimax(store, tmp_path):
    fill(store, tmp_path)
    with open_store(store) as con:
        diff = design_logging_policy(con, ["A", "B"], 300, objective="difference", estimator="dr", floor=0.01)
        minimax = design_logging_policy(con, ["A", "B"], 300, objective="minimax")
        average = design_logging_policy(con, ["A", "B"], 300, objective="average", solver="cvxpy")
    assert diff.policy["prob"].min() >= 0.01 - 1e-12
    assert minimax.solver == "cvxpy" and average.solver == "cvxpy"
    for result in (diff, minimax, average):
        sums = result.policy.group_by("context_id").agg(pl.col("prob").sum())["prob"]
        np.testing.assert_allclose(sums.to_numpy(), 1, atol=1e-9)


def test_min_reward_ratio_holds(store, tmp_path):
    _, _, _, probs = fill(store, tmp_path)
    with open_store(store) as con:
        free = design_logging_policy(con, ["B"], 300)
        held = design_logging_policy(con, ["B"], 300, min_reward_ratio=1.2)
    pi0_value = {a.name: a for a in held.alternatives}["pi0"].expected_reward
    assert free.expected_reward < 1.2 * pi0_value  # the constraint binds here ...
    assert held.expected_reward == pytest.approx(1.2 * pi0_value, rel=1e-6)  # ... and holds, with equality
    assert held.std_error >= free.std_error


def test_second_moment_table_and_context_free_log(store, tmp_path):
    with open_store(store) as con:
        con.execute("INSERT INTO events VALUES (0, 1, 'uni', NULL, NULL, 0, 0.5, 1.0, [0.5, 0.5], NULL, NULL, NULL), "
                    "(1, 1, 'uni', NULL, NULL, 1, 0.5, 0.0, [0.5, 0.5], NULL, NULL, NULL)")
        as_ingested(con, 1, "uni", 2)
        pl.DataFrame({"context_id": [None, None], "action": [0, 1], "prob": [0.5, 0.5]}).write_csv(tmp_path / "t.csv")
        add_policy(con, "T", tmp_path / "t.csv")
        pl.DataFrame({"context_id": [None, None], "action": [0, 1], "s": [1.0, 9.0]}).write_csv(tmp_path / "s.csv")
        result = design_logging_policy(con, ["T"], 2, second_moment_table=tmp_path / "s.csv")
    # alpha = 1/2, pi0 uniform: pibar ~ (1, 3)/4 -> pi1 = (0, 1)
    assert result.policy["context_id"].null_count() == 2
    np.testing.assert_allclose(result.policy["prob"].to_numpy(), [0.0, 1.0], atol=1e-12)


def test_second_moment_context_ids_are_matched_as_text(store, tmp_path):
    """Ids that look like numbers: "007" was read as 7 and a 19-digit id as a float, so their rows matched no
    context of the log and were dropped silently (the defaults were used)."""
    long_id = "1234567890123456789"
    with open_store(store) as con:
        con.execute("INSERT INTO events SELECT i, 1, 'uni', CASE WHEN i % 4 < 2 THEN '007' ELSE ? END, NULL, i % 2, "
                    "0.5, (i % 3 = 0)::DOUBLE, [0.5, 0.5], NULL, NULL, NULL FROM range(40) t(i)", [long_id])
        as_ingested(con, 1, "uni", 40)
        (tmp_path / "t.csv").write_text("context_id,action,prob\n,0,0.5\n,1,0.5\n")
        add_policy(con, "T", tmp_path / "t.csv")
        (tmp_path / "s.csv").write_text(f"context_id,action,s\n,0,1\n,1,1\n007,0,100\n007,1,0.01\n"
                                        f"{long_id},0,0.01\n{long_id},1,100\n")
        result = design_logging_policy(con, ["T"], 40, second_moment_table=tmp_path / "s.csv")
    pi1 = {(c, a): p for c, a, p in result.policy.select("context_id", "action", "prob").iter_rows()}
    assert pi1[("007", 0)] > 0.9 and pi1[(long_id, 1)] > 0.9  # the context's own s, not the defaults (1, 1)


def test_command_saves_and_writes(store, tmp_path):
    fill(store, tmp_path)
    out = tmp_path / "next.csv"
    runner = CliRunner()
    res = runner.invoke(design, [str(store), "--target", "A", "--budget", "500", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "ignore_log" in res.output and "rounds_needed" in res.output
    res = runner.invoke(design, [str(store), "--target", "A", "--budget", "500", "--format", "json"])
    assert res.exit_code != 0 and "already exists" in str(res.exception)
    res = runner.invoke(design, [str(store), "--target", "A", "--budget", "500", "--format", "json", "--replace"])
    report = json.loads(res.output)[0]
    assert report["saved_as"] == "mval-A" and len(report["alternatives"]) == 4
    with open_store(store) as con:
        stored = load_policy(con, "mval-A", n_actions=K)
        add_policy(con, "from-file", out)  # the file reads straight back in
        again = load_policy(con, "from-file", n_actions=K)
    np.testing.assert_allclose(stored.probs, again.probs)


def test_a_policy_file_that_cannot_be_written_leaves_the_store_as_it_was(store, tmp_path):
    """An OS error on the -o path (here a file name longer than the file system takes, which already the
    up-front path check meets) is one line naming the flag and the file, exit 2, and nothing is saved. A
    write that fails inside the save's transaction is the full-disk test below."""
    from cli import main

    fill(store, tmp_path)
    out = tmp_path / ("x" * 300 + ".csv")
    res = CliRunner().invoke(main, ["design", str(store), "--target", "A", "--budget", "500", "-o", str(out)])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith(f"Error: -o {out}: File name too long; choose another path"), res.output
    with open_store(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM policies WHERE policy = 'mval-A'").fetchall() == [(0,)]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail: disk full)")
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_a_full_disk_is_one_line_and_leaves_the_store_as_it_was(store, tmp_path, suffix):
    """Writes that fail with no file name (ENOSPC on close) or inside polars are named by the -o path;
    polars' JSON writer, which swallows the error, included (the bytes are written by mval)."""
    from cli import main

    fill(store, tmp_path)
    full = tmp_path / f"full{suffix}"
    full.symlink_to("/dev/full")
    res = CliRunner().invoke(main, ["design", str(store), "--target", "A", "--budget", "500", "-o", str(full)])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith(f"Error: {full}: cannot write (No space left on device)"), res.output
    res = CliRunner().invoke(main, ["query", str(store), "SELECT 1 AS x", "-o", str(full)])  # format from the suffix
    assert res.exit_code == 2 and "cannot write" in res.output, res.output
    with open_store(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM policies WHERE policy = 'mval-A'").fetchall() == [(0,)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_an_unwritable_folder_is_refused_before_designing(store, tmp_path):
    from cli import main

    fill(store, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    res = CliRunner().invoke(main, ["design", str(store), "--target", "A", "--budget", "500", "-o", str(locked / "p.csv")])
    assert res.exit_code == 2 and "is not writable" in res.output, res.output


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": ["nope"]}, "no policy named 'nope'"),
        ({"budget": 0}, "positive whole number"),
        ({"targets": ["A"], "objective": "difference"}, "two policies"),
        ({"targets": ["A", "B"], "objective": "minimax", "solver": "exact"}, "needs --solver cvxpy"),
        ({"loggers": ["ghost"]}, "no events from 'ghost'"),
        ({"estimator": "snips"}, "unknown"),
        ({"targets": ["A", "A"]}, "appears twice"),
        ({"min_reward_ratio": -1.0}, ">= 0"),
        ({"min_reward_ratio": 50.0}, "out of reach"),
        ({"floor": 0.5}, "no policy has that floor"),
    ],
)
def test_refusals(store, tmp_path, kwargs, match):
    fill(store, tmp_path)
    args = {"targets": ["A"], "budget": 100, **kwargs}
    with open_store(store) as con, pytest.raises(MvalError, match=match):
        design_logging_policy(con, **args)


def test_refuses_logger_without_distribution(store, tmp_path):
    fill(store, tmp_path, with_probs=False)
    with open_store(store) as con, pytest.raises(MvalError, match="mval policy add STORE prod"):
        design_logging_policy(con, ["A"], 100)


def test_refuses_empty_store(store):
    with open_store(store) as con, pytest.raises(MvalError, match="no events"):
        design_logging_policy(con, ["A"], 100)


def test_refuses_rows_written_around_ingest(store, tmp_path):
    """The design reads counted cells: a row added to `events` without its cell is named, not left out."""
    fill(store, tmp_path)
    with open_store(store) as con:
        con.execute("INSERT INTO events VALUES (9999, 1, 'prod', 'c0', NULL, 0, 0.5, 1.0, NULL, NULL, NULL, NULL)")
        with pytest.raises(MvalError, match="event_cells count 400 of the chosen 401 events"):
            design_logging_policy(con, ["A"], 100)


@pytest.mark.parametrize("estimator, reward, match", [
    ("ips", 0.0, "every logged reward is 0"),
    ("dr", 1.0, "the logged rewards never vary"),
])
def test_rewards_that_cannot_vary_are_refused(store, tmp_path, estimator, reward, match):
    """Constant rewards (0 for IPS, any value for DR) predict a standard error of 0 for every pi1: refused."""
    fill(store, tmp_path, rewards=np.full(400, reward))
    with open_store(store) as con:
        with pytest.raises(MvalError, match=match):
            design_logging_policy(con, ["A", "B"], 600, estimator=estimator)


def test_one_varying_reward_is_enough_to_design(store, tmp_path):
    fill(store, tmp_path, rewards=np.r_[1.0, np.zeros(399)])
    with open_store(store) as con:
        assert design_logging_policy(con, ["A", "B"], 600).std_error > 0


@pytest.mark.parametrize("rows, match", [
    ("context_id,action,s\n,0,abc\n,1,1\n", r"s.csv: row 1, column s: must be a number, found 'abc'"),
    ("context_id,action,s\n,0,1\n,x,1\n", r"s.csv: row 2, column action: must be an integer, found 'x'"),
    ("context_id,action,s\n,0,1\n,0,5\n,1,1\n", r"s.csv: context_id None, action 0 appears more than once"),
])
def test_bad_second_moment_tables_are_refused(store, tmp_path, rows, match):
    """A text s was a polars traceback; a repeated (context_id, action) silently kept the last row."""
    fill(store, tmp_path)
    (tmp_path / "s.csv").write_text(rows)
    with open_store(store) as con, pytest.raises(MvalError, match=match):
        design_logging_policy(con, ["A"], 100, second_moment_table=tmp_path / "s.csv")


def test_an_existing_save_as_name_is_refused_before_designing(store, tmp_path):
    """The name is checked first: here the target does not even exist, and the name is what is refused."""
    fill(store, tmp_path)
    from cli import main

    res = CliRunner().invoke(main, ["design", str(store), "--target", "nope", "--budget", "10", "--save-as", "A"])
    assert res.exit_code == 2 and "policy 'A' already exists in the store; pick another --save-as" in res.output


def test_small_rewards_are_designed_like_large_ones(store, tmp_path):
    """The zero-variance refusal is relative: rewards in units of 1e-9 give the same design, SE x 1e-9."""
    from mval.store import init_store

    rewards = (np.random.default_rng(5).random(400) < 0.3).astype(float)
    (tmp_path / "big").mkdir()
    big = init_store(tmp_path / "big" / "s.duckdb")
    fill(big, tmp_path / "big", rewards=rewards)
    fill(store, tmp_path, rewards=rewards * 1e-9)
    with open_store(store) as con, open_store(big) as con_big:
        small, large = (design_logging_policy(c, ["A", "B"], 600) for c in (con, con_big))
    assert small.std_error == pytest.approx(1e-9 * large.std_error, rel=1e-6)


def test_a_fractional_action_in_the_second_moment_table_is_refused(store, tmp_path):
    """A cast to integers truncated 1.5 to 1 and used its s for action 1."""
    fill(store, tmp_path)
    (tmp_path / "s.csv").write_text("context_id,action,s\n,0,1\n,1.5,2\n,2,1\n")
    with open_store(store) as con, pytest.raises(MvalError, match=r"row 2, column action: must be an integer, found 1.5"):
        design_logging_policy(con, ["A"], 100, second_moment_table=tmp_path / "s.csv")


def test_dr_design_is_unchanged_by_a_reward_offset_a_billion_times_the_spread(store, tmp_path):
    """E[r^2] - m^2 cancelled for rewards near 1e9 (the designed policy and SE were off); the moments are now
    taken about the log's mean reward."""
    from mval.store import init_store

    rewards = np.random.default_rng(3).normal(size=400)
    fill(store, tmp_path, rewards=rewards)
    shifted = init_store(tmp_path / "shifted.duckdb")
    fill(shifted, tmp_path, rewards=rewards + 1e9)
    results = []
    for path in (store, shifted):
        with open_store(path) as con:
            results.append(design_logging_policy(con, ["B"], 300, estimator="dr"))
    plain, offset = results
    assert offset.std_error == pytest.approx(plain.std_error, rel=1e-6)
    np.testing.assert_allclose(offset.policy["prob"].to_numpy(), plain.policy["prob"].to_numpy(), atol=1e-6)
    assert offset.expected_reward - 1e9 == pytest.approx(plain.expected_reward, abs=1e-5)


def test_an_action_a_target_lists_with_probability_0_is_not_designed_for(store, tmp_path):
    """It counted as a 4th action: the floor put new traffic on it and the 'uniform' alternative spread over it."""
    fill(store, tmp_path)
    pl.DataFrame({"context_id": [None] * (K + 1), "action": range(K + 1),
                  "prob": [0.1, 0.2, 0.7, 0.0]}).write_csv(tmp_path / "a0.csv")
    with open_store(store) as con:
        add_policy(con, "A0", tmp_path / "a0.csv")
        plain = design_logging_policy(con, ["A"], 300, floor=0.05)
        listed = design_logging_policy(con, ["A0"], 300, floor=0.05)
    assert listed.policy["action"].max() == K - 1
    np.testing.assert_allclose(listed.policy["prob"].to_numpy(), plain.policy["prob"].to_numpy(), atol=1e-12)
    assert [a.std_error for a in listed.alternatives] == pytest.approx([a.std_error for a in plain.alternatives])


def test_a_logger_policy_table_that_did_not_log_the_rows_is_refused(store, tmp_path):
    """'prod' logged its rows with per-context distributions; a uniform table named 'prod' would be designed with."""
    fill(store, tmp_path)
    pl.DataFrame({"context_id": [None] * K, "action": range(K), "prob": [1 / K] * K}).write_csv(tmp_path / "u.csv")
    with open_store(store) as con:
        add_policy(con, "prod", tmp_path / "u.csv")
        with pytest.raises(MvalError, match=r"^logger 'prod''s policy gives action \d at context 'c\d' probability "
                                            r"0.3333, but its rows logged propensity 0\.[0-9]+ there; \d+ more "
                                            r"context-action pairs like it; the policy named like a logger"):
            design_logging_policy(con, ["A"], 300)
