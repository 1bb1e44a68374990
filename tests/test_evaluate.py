"""`evaluate_policy` and `mval evaluate` on real stores, checked against numpy on the same rows."""

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner
from conftest import as_ingested

from cli import main
from mval.commands.evaluate import evaluate
from mval.errors import MvalError
from mval.estimators import LoggedData, make_estimator
from mval.evaluate import deal_folds, evaluate_policy
from mval.policies import add_policy
from mval.reward_model import cross_fit_means
from mval.store import add_event_cells, init_store, load_sql, open_store

K, CONTEXTS = 3, [f"c{i}" for i in range(4)]
UNIFORM = np.full((4, K), 1 / K)
LOGGER_B = np.array([[0.7, 0.3, 0.0], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]])  # never action 2 at c0
TARGET = np.array([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
TARGET_SAFE = np.array([[0.5, 0.5, 0.0], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])  # covered by B
SIZES = {"A": 600, "B": 400, "C": 300, "D": 200}


def write_policy(con, tmp_path: Path, name: str, probs: np.ndarray, contexts=CONTEXTS) -> None:
    path = tmp_path / f"{name}.csv"
    pl.DataFrame({
        "context_id": np.repeat(contexts, probs.shape[1]),
        "action": np.tile(np.arange(probs.shape[1]), len(contexts)),
        "prob": probs.ravel(),
    }).write_csv(path)
    add_policy(con, name, path)


def insert_events(con, frame: pl.DataFrame) -> None:
    """Rows straight into `events` and `event_cells`, one new ingest per logger (as `mval ingest` keeps them)."""
    first = con.execute("SELECT coalesce(max(ingest_id), 0) + 1 FROM ingests").fetchall()[0][0]
    names = sorted(set(frame["logger"].to_list()))
    ids = {name: first + i for i, name in enumerate(names)}
    frame = frame.with_columns(ingest_id=pl.col("logger").replace_strict(ids, return_dtype=pl.Int32))
    con.register("staged_events", frame)
    columns = ", ".join(frame.columns)
    con.execute(f"INSERT INTO events ({columns}) SELECT {columns} FROM staged_events")
    con.unregister("staged_events")
    for name, ingest_id in ids.items():
        as_ingested(con, ingest_id, name, int((frame["logger"] == name).sum()))


def log_frame(seed: int = 0) -> pl.DataFrame:
    """A: uniform, B: LOGGER_B (policies in the store); C: only action_probs; D: unknown policy."""
    rng = np.random.default_rng(seed)
    logger = np.repeat(list(SIZES), list(SIZES.values()))
    n = len(logger)
    ctx = rng.integers(4, size=n)
    probs = np.where((logger == "B")[:, None], LOGGER_B[ctx], UNIFORM[ctx])
    probs[logger == "C"] = [0.2, 0.3, 0.5]
    action = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1).clip(max=K - 1)
    reward = (rng.random(n) < 0.2 + 0.2 * action + 0.05 * ctx).astype(float)
    return pl.DataFrame({
        "event_id": np.arange(n),
        "logger": logger,
        "context_id": np.array(CONTEXTS)[ctx],
        "action": action.astype(np.int32),
        "propensity": probs[np.arange(n), action],
        "reward": reward,
        "action_probs": [p.tolist() if g == "C" else None for p, g in zip(probs, logger)],
        "position": [None if g == "D" else int(v) for g, v in zip(logger, rng.integers(2, size=n))],
    }, schema_overrides={"action_probs": pl.List(pl.Float64), "position": pl.Int32})


@pytest.fixture
def logs(tmp_path):
    path = init_store(tmp_path / "logs.duckdb")
    frame = log_frame()
    with open_store(path) as con:
        insert_events(con, frame)
        write_policy(con, tmp_path, "A", UNIFORM[:1], contexts=[""])  # context-free: empty context_id
        write_policy(con, tmp_path, "B", LOGGER_B)
        write_policy(con, tmp_path, "T", TARGET)
        write_policy(con, tmp_path, "T-safe", TARGET_SAFE)
        write_policy(con, tmp_path, "T-4", np.full((4, 4), 0.25))
        write_policy(con, tmp_path, "T-pos", np.tile(TARGET_SAFE, (2, 1)),
                     contexts=[f"{c}|{p}" for p in (0, 1) for c in CONTEXTS])
    return path, frame


def arrays(frame: pl.DataFrame, loggers):
    sel = frame.filter(pl.col("logger").is_in(loggers))
    ctx = np.array([CONTEXTS.index(c) for c in sel["context_id"]])
    k = np.array([loggers.index(g) for g in sel["logger"]])
    return sel, ctx, sel["action"].to_numpy(), sel["propensity"].to_numpy(), sel["reward"].to_numpy(), k


def stratified_se(terms, k):
    n_k = np.bincount(k)
    return np.sqrt(sum(n * terms[k == j].var(ddof=1) for j, n in enumerate(n_k)) / len(terms) ** 2)


def by_name(result):
    return {e.estimator: e for _, e in result.estimates}


def test_importance_sampling_matches_numpy(logs):
    path, frame = logs
    with open_store(path, read_only=True) as con:
        result = by_name(evaluate_policy(con, "T-safe", ["A", "B"], ["ips", "snips", "balanced-ips", "weighted-ips"]))
    _, ctx, a, p, r, k = arrays(frame, ["A", "B"])
    w = TARGET_SAFE[ctx, a] / p
    assert result["ips"].estimate == pytest.approx(np.mean(w * r))
    assert result["ips"].std_error == pytest.approx(stratified_se(w * r, k))
    assert result["ips"].n == 1000
    assert result["ips"].ess == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert result["snips"].estimate == pytest.approx((w * r).sum() / w.sum())
    pibar = 0.6 * UNIFORM + 0.4 * LOGGER_B
    wb = TARGET_SAFE[ctx, a] / pibar[ctx, a]
    assert result["balanced-ips"].estimate == pytest.approx(np.mean(wb * r))
    assert result["balanced-ips"].std_error == pytest.approx(stratified_se(wb * r, k))
    means = np.array([np.mean((w * r)[k == j]) for j in (0, 1)])
    prec = np.array([1 / ((w * r)[k == j].var(ddof=1) / (k == j).sum()) for j in (0, 1)])
    assert result["weighted-ips"].estimate == pytest.approx(prec @ means / prec.sum())


def test_model_estimators_use_out_of_fold_context_means(logs):
    path, frame = logs
    with open_store(path, read_only=True) as con:
        result = by_name(evaluate_policy(con, "T-safe", ["A", "B"], ["dm", "dr", "balanced-dr"], seed=3))
        ingest_of = dict(con.execute("SELECT logger, ingest_id FROM ingests").fetchall())
        cells = con.sql(load_sql("evaluate_rows"), params={
            "all_ingests": False, "ingest_ids": [ingest_of["A"], ingest_of["B"]], "position_in_context": False,
            "by_position": False, "with_features": False}).pl()
    # cells in the documented order: logger (one ingest each here, numbered in name order), then the keys
    cells = cells.sort(["ingest_id", "context_key", "action", "propensity", "reward"], nulls_last=True)
    # the documented fold rule: each group of identical rows is dealt over 5 folds, Multinomial(count, 1/5)
    dealt = deal_folds(cells["count"].to_numpy(), 5, seed=3)
    assert (dealt.sum(axis=1) == cells["count"].to_numpy()).all() and (dealt.sum(axis=0) > 0).all()
    group, fold = np.nonzero(dealt)
    ctx = np.array([CONTEXTS.index(c) for c in cells["context_key"]])[group]
    a, r, p = (cells[c].to_numpy()[group] for c in ("action", "reward", "propensity"))
    k = (cells["ingest_id"].to_numpy()[group] == ingest_of["B"]).astype(int)
    table = cross_fit_means(ctx, a, r, fold, 4, K, 5, dealt[group, fold])  # the documented default model, by hand
    q = table[fold, ctx]
    pibar = (0.6 * UNIFORM + 0.4 * LOGGER_B)[ctx, a]
    data = LoggedData.from_full(r, a, TARGET_SAFE[ctx], p, logger=k, pibar=pibar, q=q, count=dealt[group, fold])
    for name in ("dm", "dr", "balanced-dr"):
        expected = make_estimator(name).estimate(data)
        assert result[name].estimate == pytest.approx(expected.estimate), name
        assert result[name].std_error == pytest.approx(expected.std_error), name


def test_logger_known_from_action_probs(logs):
    path, frame = logs
    with open_store(path, read_only=True) as con:
        result = by_name(evaluate_policy(con, "T", ["A", "C"], ["balanced-ips"]))
    _, ctx, a, p, r, k = arrays(frame, ["A", "C"])
    pibar = (600 * UNIFORM + 300 * np.array([0.2, 0.3, 0.5])) / 900
    assert result["balanced-ips"].estimate == pytest.approx(np.mean(TARGET[ctx, a] / pibar[ctx, a] * r))


def test_per_position_and_position_as_context(logs):
    path, frame = logs
    with open_store(path, read_only=True) as con:
        per = evaluate_policy(con, "T-safe", ["A", "B"], ["ips"], positions="per-position")
        ctx_mode = evaluate_policy(con, "T-pos", ["A", "B"], ["ips"], positions="context")
        pooled = evaluate_policy(con, "T-safe", ["A", "B"], ["ips"])
    sel, ctx, a, p, r, _ = arrays(frame, ["A", "B"])
    pos = sel["position"].to_numpy()
    assert [position for position, _ in per.estimates] == [0, 1]
    for position, est in per.estimates:
        rows = pos == position
        assert est.estimate == pytest.approx(np.mean(TARGET_SAFE[ctx, a][rows] / p[rows] * r[rows]))
        assert est.n == rows.sum()
    assert {r["positions"] for r in per.records()} == {"per-position"}
    # T-pos is T-safe at every (context, position): the same number as pooled
    assert by_name(ctx_mode)["ips"].estimate == pytest.approx(by_name(pooled)["ips"].estimate)
    assert ctx_mode.records()[0]["positions"] == "context"


def test_rows_without_context_and_a_context_free_target(tmp_path):
    path = init_store(tmp_path / "s.duckdb")
    frame = log_frame().filter(pl.col("logger") == "A").with_columns(pl.lit(None, pl.String).alias("context_id"))
    with open_store(path) as con:
        insert_events(con, frame)
        write_policy(con, tmp_path, "A", UNIFORM[:1], contexts=[""])
        write_policy(con, tmp_path, "flat", np.array([[0.2, 0.3, 0.5]]), contexts=[""])
        write_policy(con, tmp_path, "T", TARGET)
    with open_store(path, read_only=True) as con:
        result = by_name(evaluate_policy(con, "flat", None, ["ips", "dr", "balanced-ips"]))
        with pytest.raises(MvalError, match="policy 'T' gives no probabilities for rows with no context_id"):
            evaluate_policy(con, "T", None, ["ips"])
    a, r = frame["action"].to_numpy(), frame["reward"].to_numpy()
    assert result["ips"].estimate == pytest.approx(np.mean(np.array([0.2, 0.3, 0.5])[a] * 3 * r))
    assert result["balanced-ips"].estimate == pytest.approx(result["ips"].estimate)


def test_features_use_a_cross_fitted_linear_model(tmp_path):
    path = init_store(tmp_path / "s.duckdb")
    rng = np.random.default_rng(0)
    frame = log_frame().filter(pl.col("logger") == "A")
    frame = frame.with_columns(pl.Series("features", rng.normal(size=(frame.height, 2)).tolist()))
    with open_store(path) as con:
        insert_events(con, frame)
        write_policy(con, tmp_path, "T", TARGET)
    with open_store(path, read_only=True) as con:
        result = evaluate_policy(con, "T", None, ["dm", "dr"])
    assert result.reward_model == "cross-fitted linear/logistic on features"
    truth = float((TARGET * (0.2 + 0.2 * np.arange(K) + 0.05 * np.arange(4)[:, None])).sum(axis=1).mean())
    dr = by_name(result)["dr"]
    assert abs(dr.estimate - truth) < 4 * dr.std_error
    with open_store(path, read_only=True) as con:  # a reward model next to estimators that need none
        from sklearn.linear_model import LogisticRegression

        ips = evaluate_policy(con, "T", None, ["ips"], reward_model=LogisticRegression)
    assert ips.reward_model is None and by_name(ips)["ips"].n == frame.height


def test_all_skips_what_cannot_run_and_says_why(logs):
    path, _ = logs
    runner = CliRunner()
    out = runner.invoke(evaluate, [str(path), "--policy", "T", "--loggers", "A,B", "--format", "json"])
    assert out.exit_code == 0, out.output
    records = json.loads(out.stdout)
    names = [r["estimator"] for r in records]
    assert names == ["dm", "balanced-ips", "balanced-dr"]  # B never plays action 2 at c0, which T does
    assert "skipped ips: no overlap: policy 'T' gives probability 0.5 to action 2 at context 'c0'" in out.stderr


def test_cli_json_csv_table(logs):
    path, _ = logs
    runner = CliRunner()
    args = [str(path), "--policy", "T-safe", "--loggers", "A,B", "--estimator", "ips,snips", "--estimator", "dr"]
    out = runner.invoke(evaluate, [*args, "--format", "json", "--bootstrap", "50", "--seed", "1"])
    assert out.exit_code == 0, out.output
    records = json.loads(out.stdout)
    assert [r["estimator"] for r in records] == ["ips", "snips", "dr"]
    for key in ("estimator", "estimate", "std_error", "ci_low", "ci_high", "ess", "n", "boot_low", "boot_high"):
        assert all(r[key] is not None for r in records), key
    with open_store(path, read_only=True) as con:
        direct = by_name(evaluate_policy(con, "T-safe", ["A", "B"], ["ips"], n_boot=50, seed=1))
    assert records[0]["estimate"] == pytest.approx(direct["ips"].estimate)
    assert records[0]["boot_low"] == pytest.approx(direct["ips"].boot_low)
    csv = runner.invoke(evaluate, [*args, "--format", "csv"])
    assert csv.stdout.splitlines()[0].startswith("estimator,estimate,std_error,ci_low,ci_high,ess,n")
    assert len(csv.stdout.splitlines()) == 4
    table = runner.invoke(evaluate, args)
    assert "positions pooled" in table.stdout and "snips" in table.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (["--policy", "T-safe", "--estimator", "ipw"], "--estimator ipw: unknown estimator"),
        (["--policy", "T", "--loggers", "A,B", "--estimator", "ips"],
         "--estimator ips: no overlap: policy 'T' gives probability 0.5 to action 2 at context 'c0' but logger 'B'"),
        (["--policy", "T-safe", "--loggers", "A,D", "--estimator", "balanced-ips"],
         "--estimator balanced-ips: logger 'D' has no known policy"),
        (["--policy", "T-4"], "policy 'T-4' has 4 actions .* but the log has 3"),
        (["--policy", "nope"], "no policy named 'nope'"),
        (["--policy", "T-safe", "--loggers", "A,Z"], "--loggers: no rows from logger 'Z'"),
        (["--policy", "T-safe", "--loggers", "D", "--positions", "per-position"], "the chosen rows have no position"),
        (["--policy", "T-safe", "--estimator", "clipped-ips", "--clip", "0"], "--clip .* must be > 0"),
        (["--policy", "T-safe", "--bootstrap", "1"],  # its interval had width 0
         r"--bootstrap 1: a 95% percentile interval needs at least 40 replicates \(1000 is usual\); 0 skips it"),
    ],
)
def test_cli_refusals(logs, args, match):
    path, _ = logs
    out = CliRunner().invoke(main, ["evaluate", str(path), *args])
    assert out.exit_code == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert re.search(match, out.stderr), out.stderr


def test_empty_store_is_refused(tmp_path):
    path = init_store(tmp_path / "empty.duckdb")
    out = CliRunner().invoke(main, ["evaluate", str(path), "--policy", "T"])
    assert out.exit_code == 2
    assert "the store has no events" in out.stderr


def test_evaluate_opens_the_store_read_only(logs):
    path, _ = logs
    before = path.stat().st_mtime_ns
    out = CliRunner().invoke(evaluate, [str(path), "--policy", "T-safe", "--estimator", "ips"])
    assert out.exit_code == 0
    assert path.stat().st_mtime_ns == before


def test_action_probs_of_different_lengths_are_refused(logs, tmp_path):
    path, frame = logs
    longer = frame.filter(pl.col("logger") == "C").with_columns(
        logger=pl.lit("C4"), event_id=pl.col("event_id") + 10_000,
        action_probs=pl.col("action_probs").list.concat(pl.lit([0.0])))
    with open_store(path) as con:
        insert_events(con, longer)
    with open_store(path, read_only=True) as con, pytest.raises(MvalError, match=r"different lengths \(3 and 4\)"):
        evaluate_policy(con, "T-safe", ["C", "C4"], ["snips"])
    with open_store(path, read_only=True) as con:  # one length per selection is fine
        assert by_name(evaluate_policy(con, "T-safe", ["C"], ["snips"]))["snips"].n == SIZES["C"]


def test_features_are_used_only_when_every_chosen_row_has_them(tmp_path):
    path = init_store(tmp_path / "s.duckdb")
    rng = np.random.default_rng(0)
    frame = log_frame().filter(pl.col("logger").is_in(["A", "B"]))
    vectors = rng.normal(size=(frame.height, 2)).tolist()
    frame = frame.with_columns(pl.Series("features", [v if g == "A" else None for v, g in
                                                       zip(vectors, frame["logger"])], dtype=pl.List(pl.Float64)))
    with open_store(path) as con:
        insert_events(con, frame)
        write_policy(con, tmp_path, "T", TARGET_SAFE)
    with open_store(path, read_only=True) as con:
        assert evaluate_policy(con, "T", ["A"], ["dr"]).reward_model == "cross-fitted linear/logistic on features"
        assert "features" not in evaluate_policy(con, "T", ["A", "B"], ["dm"]).reward_model


def test_a_logger_over_several_ingests_is_one_logger(logs, tmp_path):
    """Rows are read per ingest: a logger's rows split over two ingests give the same estimates."""
    path, frame = logs
    split = init_store(tmp_path / "split.duckdb")
    with open_store(split) as con:
        insert_events(con, frame.gather_every(2))  # every logger in both halves: two ingests each
        insert_events(con, frame.gather_every(2, offset=1))
        write_policy(con, tmp_path, "A", UNIFORM[:1], contexts=[""])
        write_policy(con, tmp_path, "B", LOGGER_B)
        write_policy(con, tmp_path, "T-safe", TARGET_SAFE)
        assert con.execute("SELECT count(*) FROM ingests").fetchall()[0][0] == 2 * len(SIZES)
    names = ["ips", "snips", "balanced-ips", "dr"]
    with open_store(path, read_only=True) as one, open_store(split, read_only=True) as two:
        for loggers in (["A", "B"], ["B"]):
            a = by_name(evaluate_policy(one, "T-safe", loggers, names))
            b = by_name(evaluate_policy(two, "T-safe", loggers, names))
            for name in names:
                assert (b[name].estimate, b[name].std_error, b[name].n) == pytest.approx(
                    (a[name].estimate, a[name].std_error, a[name].n)), (loggers, name)


def test_fold_dealing_is_multinomial():
    """deal_folds (conditional binomials) against the multinomial: totals kept, each fold Binomial(c, 1/5)
    (mean c/5, variance c (1/5)(4/5), within 10%), folds negatively correlated (cov -c/25)."""
    counts = np.full(20_000, 50)
    sizes = deal_folds(counts, 5, seed=0)
    assert (sizes.sum(axis=1) == counts).all() and (sizes >= 0).all()
    assert np.abs(sizes.mean(axis=0) - 10).max() < 3 * np.sqrt(8 / 20_000)
    assert sizes.var(axis=0) == pytest.approx(np.full(5, 50 * 0.2 * 0.8), rel=0.1)
    assert np.cov(sizes[:, 0], sizes[:, 4])[0, 1] == pytest.approx(-50 / 25, rel=0.1)
    assert (deal_folds(counts, 5, seed=0) == sizes).all() and not (deal_folds(counts, 5, seed=1) == sizes).all()


@pytest.mark.parametrize("ingest_id, cells, match", [
    (None, False, r"event_cells count 600 of the chosen 601 events: rows were written into `events` around"),
    (77, True, "ingest 77 have no row in `ingests`"),  # as a version-1 store with such rows migrates
])
def test_rows_written_around_mval_ingest_are_refused(logs, ingest_id, cells, match):
    """Evaluation reads counted cells and each ingest's logger from `ingests`: rows that bypassed
    `mval ingest` are refused, not silently left out."""
    path, frame = logs
    with open_store(path) as con:
        logger_a = con.execute("SELECT ingest_id FROM ingests WHERE logger = 'A'").fetchall()[0][0]
        con.execute("INSERT INTO events (event_id, ingest_id, logger, context_id, action, propensity, reward) "
                    "VALUES (99999, ?, 'A', 'c0', 0, 0.5, 1.0)", [ingest_id or logger_a])
        if cells:
            add_event_cells(con, ingest_id)
    with open_store(path, read_only=True) as con, pytest.raises(MvalError, match=match):
        evaluate_policy(con, "T-safe", None if cells else ["A"], ["snips"])


def test_a_target_may_list_actions_the_log_never_has_at_probability_0(logs, tmp_path):
    path, frame = logs
    with open_store(path) as con:
        write_policy(con, tmp_path, "T-extra", np.hstack([TARGET_SAFE, np.zeros((4, 1))]))
    with open_store(path, read_only=True) as con:
        extra = by_name(evaluate_policy(con, "T-extra", ["A", "B"], ["ips", "dm"]))
        plain = by_name(evaluate_policy(con, "T-safe", ["A", "B"], ["ips", "dm"]))
        with pytest.raises(MvalError, match="policy 'T-4' has 4 actions"):  # a positive probability is still refused
            evaluate_policy(con, "T-4", ["A", "B"], ["ips"])
    assert extra["ips"].estimate == plain["ips"].estimate and extra["dm"].estimate == plain["dm"].estimate


def test_all_skips_estimators_that_refuse_these_rows(tmp_path):
    """A logger with one row: weighted-ips cannot run, the others do (and that row's variance is the pooled one);
    a logger policy that gives 0 to an action its rows took: balanced estimators are skipped, with the fix."""
    path = init_store(tmp_path / "s.duckdb")
    frame = log_frame().filter(pl.col("logger").is_in(["A", "B"]))
    b_row = frame.filter(pl.col("logger") == "B").head(1)
    frame = pl.concat([frame.filter(pl.col("logger") == "A"), b_row])
    with open_store(path) as con:
        insert_events(con, frame)
        write_policy(con, tmp_path, "A", UNIFORM[:1], contexts=[""])
        write_policy(con, tmp_path, "B", LOGGER_B)  # the policy that logged its row
        write_policy(con, tmp_path, "T", TARGET)
    with open_store(path, read_only=True) as con:
        result = evaluate_policy(con, "T", None)
    got = by_name(result)
    assert result.skipped["weighted-ips"] == "weighted-ips needs at least 2 rows from every logger, found 1"
    assert {"ips", "snips", "balanced-ips"} <= set(got)
    with open_store(path) as con:
        zero = np.full((1, K), 0.5)
        zero[0, b_row["action"][0]] = 0.0
        con.execute("DELETE FROM policies WHERE policy = 'B'")
        write_policy(con, tmp_path, "B", zero, contexts=[""])
    with open_store(path, read_only=True) as con:
        skipped = evaluate_policy(con, "T", None).skipped
    assert skipped["balanced-ips"].startswith(f"logger 'B''s policy gives probability 0 to action {b_row['action'][0]} "
                                              f"at context {b_row['context_id'][0]!r}, which its rows took; fix that logger's policy")
    sel, ctx, a, p, r, k = arrays(frame, ["A", "B"])
    terms = TARGET[ctx, a] / p * r
    n_a = int((k == 0).sum())
    expected_var = (n_a * terms[k == 0].var(ddof=1) + terms.var(ddof=1)) / len(terms) ** 2
    assert got["ips"].estimate == pytest.approx(terms.mean())
    assert got["ips"].std_error == pytest.approx(np.sqrt(expected_var))


def test_per_position_refuses_rows_without_a_position(logs):
    path, _ = logs
    with open_store(path, read_only=True) as con, pytest.raises(
            MvalError, match="--positions per-position: 200 of the chosen rows have no position"):
        evaluate_policy(con, "T-safe", ["A", "D"], ["ips"], positions="per-position")


def test_dm_and_dr_refuse_a_log_whose_rows_all_fall_in_one_fold(tmp_path):
    """With the other folds empty the reward model had nothing to learn from and q was 0: dm printed
    0.0 with standard error 0. One row always lands in one fold: refused, and skipped under `all`."""
    from mval.reward_model import cross_fit_means, cross_fit_model

    one_fold = np.zeros(3, dtype=np.int64)
    with pytest.raises(MvalError, match="all 3 rows fell into one of the 5 folds"):
        cross_fit_means(one_fold, np.array([0, 1, 0]), np.array([1.0, 0.0, 1.0]), one_fold, 1, 2, 5)
    with pytest.raises(MvalError, match="all 3 rows fell into one of the 5 folds"):
        cross_fit_model(np.ones((3, 1)), np.array([0, 1, 0]), np.array([1.0, 0.0, 1.0]), 2, one_fold, 5)
    path = init_store(tmp_path / "s.duckdb")
    with open_store(path) as con:
        insert_events(con, log_frame().filter((pl.col("logger") == "A") & (pl.col("action") == K - 1)).head(1))
        write_policy(con, tmp_path, "T", TARGET)
    with open_store(path, read_only=True) as con:
        with pytest.raises(MvalError, match="the log is too small for them"):
            evaluate_policy(con, "T", None, ["dm"])
        skipped = evaluate_policy(con, "T", None).skipped
    assert {"dm", "dr"} <= set(skipped)


def test_a_logger_whose_action_probs_vary_within_a_context_is_named_for_that(tmp_path):
    """Balanced estimators need the logger's probabilities at every row; action_probs that differ between
    rows of one context do not give them, and the refusal says so (it used to say "log action_probs")."""
    frame = log_frame().filter(pl.col("logger") == "C")
    varied = [[0.2, 0.3, 0.5] if i % 2 else [0.5, 0.3, 0.2] for i in range(frame.height)]
    frame = frame.with_columns(action_probs=pl.Series(varied),
                               propensity=pl.Series([p[a] for p, a in zip(varied, frame["action"])]))
    path = init_store(tmp_path / "s.duckdb")
    with open_store(path) as con:
        insert_events(con, frame)
        write_policy(con, tmp_path, "T", TARGET)
    with open_store(path, read_only=True) as con:
        with pytest.raises(MvalError, match=r"logger 'C' logs action_probs that differ between rows of one context "
                                            r".*; add its policy with `mval policy add STORE C FILE` .* or use ips"):
            evaluate_policy(con, "T", None, ["balanced-ips"])


def test_a_logger_policy_table_that_did_not_log_the_rows_is_refused_for_balanced_estimators(logs, tmp_path):
    """B's rows were logged by LOGGER_B; a uniform table named B made balanced-ips weight them by 1/3 silently."""
    close = LOGGER_B + np.array([[5e-4, -5e-4, 0.0]])  # rounded propensities (within 1e-3 + 1e-2 p) still pass
    logs, _ = logs
    with open_store(logs) as con:
        con.execute("DELETE FROM policies WHERE policy = 'B'")
        write_policy(con, tmp_path, "B", close)
    with open_store(logs, read_only=True) as con:
        assert set(by_name(evaluate_policy(con, "T", ["A", "B"], ["balanced-ips"]))) == {"balanced-ips"}
    with open_store(logs) as con:
        con.execute("DELETE FROM policies WHERE policy = 'B'")
        write_policy(con, tmp_path, "B", UNIFORM)
    with open_store(logs, read_only=True) as con:
        with pytest.raises(MvalError, match=r"^--estimator balanced-ips: logger 'B''s policy gives action \d at context "
                                            r"'c\d' probability 0.3333, but its rows logged propensity 0\.[0-9]+ there; "
                                            r"\d+ more context-action pairs like it; the policy named like a logger must "
                                            r"be the one that logged its rows"):
            evaluate_policy(con, "T", ["A", "B"], ["balanced-ips"])
        result = evaluate_policy(con, "T", ["A", "B"])
    assert "policy named like a logger must be the one" in result.skipped["balanced-dr"]
    assert "ips" in by_name(result)  # IPS reads the propensities themselves


def test_positions_in_the_context_never_merge_two_contexts(tmp_path):
    """concat_ws dropped a NULL: ('a|1', no position) and ('a', position 1) were both context 'a|1', and
    (no context_id, position 2) and ('2', no position) both '2'."""
    path = init_store(tmp_path / "s.duckdb")
    frame = pl.DataFrame({
        "event_id": range(4), "logger": ["L"] * 4, "context_id": ["a|1", "a", None, "2"],
        "action": [0, 1, 0, 1], "propensity": [0.5] * 4, "reward": [1.0, 1.0, 1.0, 1.0],
        "action_probs": [None] * 4, "position": [None, 1, 2, None],
    }, schema_overrides={"action_probs": pl.List(pl.Float64), "position": pl.Int32, "action": pl.Int32})
    with open_store(path) as con:
        insert_events(con, frame)
        # each key's policy takes exactly the action its row took: every weight is 1 / 0.5
        write_policy(con, tmp_path, "T", np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
                     contexts=["a|1|", "a|1", "2", "2|"])
    with open_store(path, read_only=True) as con:
        ips = by_name(evaluate_policy(con, "T", None, ["ips"], positions="context"))["ips"]
    assert ips.estimate == pytest.approx(2.0)  # merged contexts looked up one key's policy for both rows: 1.0
