"""Scoring a stored dataset: batches committed one by one, resume after a crash, curate, and the commands."""

from __future__ import annotations

import json
import re

import click
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from attribution.commands import curate, examples, probe, score
from attribution.curate import curate as curate_dataset
from attribution.examples import Example, add_examples
from attribution.models import load_hf_model
from attribution.probes import ProbeDirection
from attribution.scorers import ScoreRequest, make_scorer
from attribution.scoring import score_dataset
from attribution.testbed import COLORS, FRIENDLY, HOSTILE, NOUNS, tiny_model
from cli import MvalGroup
from mval.errors import MvalError
from mval.store import open_store


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny", d_model=16, n_layers=2, seed=3)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_hf_model(model_dir)


def records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(COLORS + FRIENDLY + HOSTILE, size=3))
        if i % 3:
            out.append({"id": f"ex{i}", "prompt": f"question : what color is the {rng.choice(NOUNS)} ?",
                        "response": f"answer : {words} ."})
        else:
            out.append({"id": f"ex{i}", "text": f"the {rng.choice(NOUNS)} is {words} ."})
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def filled(store, tmp_path):
    with open_store(store) as con:
        add_examples(con, "sft", write_jsonl(tmp_path / "train.jsonl", records(23)))
    return store


CONCEPT = ProbeDirection(np.random.default_rng(0).normal(size=16).astype(np.float32), 1, "mean")


class CrashAfter:
    """A real scorer that raises after `n` batches, as a killed run would stop."""

    def __init__(self, scorer, n: int):
        self.scorer, self.left = scorer, n

    def score(self, model, batch):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.scorer.score(model, batch)


def stored(con, method="probe", concept="c"):
    return con.execute("SELECT example_id, score FROM scores WHERE method = ? AND concept = ? ORDER BY example_id",
                       [method, concept]).fetchall()


@pytest.mark.parametrize("method", ["probe", "gradient"])
def test_killed_run_resumes_without_loss_or_duplicates(filled, model, tmp_path, method):
    request = ScoreRequest(CONCEPT, (Example("q", text="you are rude and lazy ."),), batch_size=5, proj_dim=64)
    with open_store(filled) as con:
        with pytest.raises(KeyboardInterrupt):
            score_dataset(con, "sft", method, "c", model, CrashAfter(make_scorer(method, request), 2), request)
        assert len(stored(con, method)) == 10  # two committed batches survive the crash
        summary = score_dataset(con, "sft", method, "c", model, make_scorer(method, request), request)
        resumed = stored(con, method)
        score_dataset(con, "sft", method, "clean", model, make_scorer(method, request), request)
        clean = stored(con, method, "clean")
    assert (summary.scored, summary.already_scored, summary.total) == (13, 10, 23)
    assert [r[0] for r in resumed] == [r[0] for r in clean] and len({r[0] for r in resumed}) == 23
    assert np.allclose([r[1] for r in resumed], [r[1] for r in clean], rtol=1e-5, atol=1e-7)


class Watching:
    """A real scorer that notes how many scores the store holds each time it is asked for a batch."""

    def __init__(self, scorer, con):
        self.scorer, self.con, self.seen = scorer, con, []

    def score(self, model, batch):
        self.seen.append(len(stored(self.con)))
        return self.scorer.score(model, batch)


@pytest.mark.parametrize("flush_seconds, seen", [(0.0, [0, 5, 10, 15, 20]), (3600.0, [0, 0, 0, 0, 0])])
def test_scores_are_committed_every_flush_seconds(filled, model, flush_seconds, seen):
    """flush_seconds 0 commits every batch (a hard kill loses nothing); a long interval commits once at
    the end (a hard kill would lose the run, Ctrl-C still keeps it: see the resume test)."""
    request = ScoreRequest(CONCEPT, batch_size=5)
    with open_store(filled) as con:
        watching = Watching(make_scorer("probe", request), con)
        score_dataset(con, "sft", "probe", "c", model, watching, request, flush_seconds=flush_seconds)
        assert watching.seen == seen and len(stored(con)) == 23


def test_rerun_with_other_settings_is_refused_unless_replaced(filled, model):
    request = ScoreRequest(CONCEPT, batch_size=8)
    other = ScoreRequest(ProbeDirection(CONCEPT.vector, 2, "mean"), batch_size=8)
    with open_store(filled) as con:
        score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", request), request)
        again = score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", request), request)
        assert (again.scored, again.already_scored) == (0, 23)
        with pytest.raises(MvalError, match=r"already has probe scores for concept 'c' made with a different layer"):
            score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", other), other)
        replaced = score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", other), other, replace=True)
        assert replaced.scored == 23 and len(stored(con)) == 23


def test_a_run_recorded_before_fingerprints_covered_the_config_still_resumes(filled, model):
    """Older runs recorded the weights' digest alone as "model": with the same weights they resume (and the
    score cache stays valid); with other weights they are refused as before."""
    import hashlib
    import json

    from attribution.models import weights_digest

    request = ScoreRequest(CONCEPT, batch_size=8)
    with open_store(filled) as con:
        with pytest.raises(KeyboardInterrupt):
            score_dataset(con, "sft", "probe", "c", model, CrashAfter(make_scorer("probe", request), 1), request)
        settings = json.loads(con.execute("SELECT settings FROM score_runs").fetchone()[0])
        old = {k: v for k, v in settings.items() if k != "weights"} | {"model": weights_digest(model.module)}
        text = json.dumps(old, sort_keys=True)
        con.execute("UPDATE score_runs SET settings = ?, fingerprint = ?", [text, hashlib.sha256(text.encode()).hexdigest()])
        resumed = score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", request), request)
        assert (resumed.scored, resumed.already_scored) == (15, 8) and len(stored(con)) == 23
        other = old | {"model": "0" * 64}
        con.execute("UPDATE score_runs SET settings = ?, fingerprint = 'x'", [json.dumps(other)])
        with pytest.raises(MvalError, match="made with a different model, weights;"):
            score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", request), request)


def test_a_run_that_fails_before_scoring_leaves_the_store_as_it_was(filled, model, tmp_path):
    """--replace deletes the old scores, and a new run is recorded, only together with the first new scores."""
    request = ScoreRequest(CONCEPT, batch_size=8)
    other = ScoreRequest(ProbeDirection(CONCEPT.vector, 2, "mean"), batch_size=8)
    runs = "SELECT method, concept, fingerprint FROM score_runs ORDER BY ALL"
    with open_store(filled) as con:
        score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", request), request)
        before, runs_before = stored(con), con.execute(runs).fetchall()
        for concept, replace in (("c", True), ("new", False)):
            with pytest.raises(KeyboardInterrupt):
                score_dataset(con, "sft", "probe", concept, model, CrashAfter(make_scorer("probe", other), 0), other,
                              replace=replace)
            assert stored(con) == before and con.execute(runs).fetchall() == runs_before
        # the retry with other settings is not refused by a run that never scored anything
        score_dataset(con, "sft", "probe", "new", model, make_scorer("probe", request), request)
        add_examples(con, "sft", write_jsonl(tmp_path / "v2.jsonl", records(5, seed=1)), replace=True)
        assert con.execute("SELECT count(*) FROM score_runs").fetchone()[0] == 0  # replaced data, no stale runs


def test_curate_drops_top_or_above_in_the_input_format(filled, model, tmp_path):
    request = ScoreRequest(CONCEPT, batch_size=8)
    with open_store(filled) as con:
        score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", request), request)
        scores = dict(stored(con))
        top = curate_dataset(con, "sft", "probe", tmp_path / "top.jsonl", drop_top=4)
        cut = float(np.median(list(scores.values())))
        above = curate_dataset(con, "sft", "probe", tmp_path / "above.jsonl", drop_above=cut)
    original = records(23)
    kept = [json.loads(line) for line in (tmp_path / "top.jsonl").read_text().splitlines()]
    worst = sorted(scores, key=lambda i: -scores[i])[:4]
    assert (top.kept, top.dropped) == (19, 4)
    assert kept == [r for r in original if r["id"] not in worst]  # same fields, same order
    kept_above = [json.loads(line)["id"] for line in (tmp_path / "above.jsonl").read_text().splitlines()]
    assert kept_above == [r["id"] for r in original if scores[r["id"]] <= cut] and above.dropped == 11


@pytest.mark.parametrize(("args", "match"), [
    ({"drop_top": 2, "drop_above": 0.0}, r"exactly one of --drop-top K or --drop-above S"),
    ({}, r"exactly one of --drop-top K or --drop-above S"),
    ({"drop_top": -1}, r"--drop-top -1: must be 0 or more"),
    ({"drop_top": 2, "method": "gradient"}, r"has no gradient scores; run `mval score`"),
    ({"drop_top": 2}, r"--concept \(not given\): dataset 'sft' has probe scores for concepts c, d; name one"),
    ({"drop_top": 2, "concept": "other"}, r"--concept other: dataset 'sft' has probe scores for concepts c, d"),
    ({"drop_top": 2, "concept": "d"}, r"2 examples have no probe score for concept 'd'; rerun `mval score` "
                                      r"\(it resumes\)"),
    ({"drop_above": float("nan")}, r"--drop-above nan: give a number"),  # it dropped nothing
])
def test_curate_refusals(filled, model, tmp_path, args, match):
    request = ScoreRequest(CONCEPT, batch_size=7)
    with open_store(filled) as con:
        score_dataset(con, "sft", "probe", "c", model, make_scorer("probe", request), request)
        with pytest.raises(KeyboardInterrupt):
            score_dataset(con, "sft", "probe", "d", model, CrashAfter(make_scorer("probe", request), 3), request)
        with pytest.raises(MvalError, match=match):
            curate_dataset(con, "sft", args.pop("method", "probe"), tmp_path / "o.jsonl", **args)


@pytest.fixture
def cli():
    group = MvalGroup(commands={"examples": examples, "probe": probe, "score": score, "curate": curate})
    return lambda *args: CliRunner().invoke(group, [str(a) for a in args])


def test_commands_end_to_end(cli, store, model_dir, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", records(12))
    labelled = [{"text": f"you are {w} .", "label": int(w in HOSTILE)} for w in FRIENDLY + HOSTILE] * 2
    write_jsonl(tmp_path / "labelled.jsonl", labelled)
    write_jsonl(tmp_path / "queries.jsonl", [{"text": "you are rude and lazy ."}, {"prompt": "hi", "response": "dumb"}])
    probe_file = tmp_path / "hostile.safetensors"

    assert "added 12 examples" in cli("examples", "add", store, "sft", tmp_path / "train.jsonl").output
    result = cli("probe", "train", "--model", model_dir, "--layer", 1, "--data", tmp_path / "labelled.jsonl",
                 "-o", probe_file, "--format", "json")
    assert result.exit_code == 0, result.output
    # 20% of each label's 12 distinct texts (2), with both copies of each: 8 rows
    assert json.loads(result.stdout)[0]["n_held_out"] == 8 and probe_file.is_file()
    result = cli("score", store, "--model", model_dir, "--dataset", "sft", "--concept", probe_file, "--method",
                 "gradient", "--queries", tmp_path / "queries.jsonl", "--proj-dim", 128, "--top", 3, "--format", "json")
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)
    assert len(top) == 3 and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    assert "12 examples scored now" in result.stderr
    assert list((tmp_path / "store.duckdb.cache").iterdir())  # projected gradients cached next to the store
    result = cli("curate", store, "--dataset", "sft", "--method", "gradient", "--drop-top", 3, "-o", tmp_path / "c.jsonl")
    assert result.exit_code == 0 and len((tmp_path / "c.jsonl").read_text().splitlines()) == 9


@pytest.mark.parametrize(("args", "match"), [
    (["examples", "add", "{store}", "sft", "{tmp}/missing.jsonl"], r"missing.jsonl: no such file"),
    (["examples", "add", "{store}", "sft", "{tmp}/empty-text.jsonl"], r"empty-text.jsonl line 2: field 'text' is empty"),
    (["probe", "train", "--model", "{model}", "--layer", "1", "--data", "{tmp}/empty-text.jsonl",
      "-o", "{tmp}/nodir/p.safetensors"], r"--output .*nodir/p.safetensors: folder .* does not exist"),
    (["probe", "train", "--model", "{model}", "--layer", "1", "-o", "{tmp}/p.safetensors"], r"exactly one of --data"),
    (["probe", "train", "--model", "{tmp}", "--layer", "1", "--direction", "{tmp}/v.npy", "-o", "{tmp}/p.safetensors"],
     r"no config.json"),
    (["score", "{store}", "--model", "{model}", "--dataset", "sft", "--concept", "{tmp}/none.safetensors"],
     r"--concept .*none.safetensors: no such probe file"),
])
def test_command_errors_are_one_line_and_exit_2(cli, store, model_dir, tmp_path, args, match):
    (tmp_path / "empty-text.jsonl").write_text('{"id": "a", "text": "hi"}\n{"id": "b", "text": " "}\n')
    result = cli(*[a.format(store=store, tmp=tmp_path, model=model_dir) for a in args])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and __import__("re").search(match, result.output)


@pytest.mark.parametrize("command", [examples.commands["add"], probe.commands["train"], score, curate])
def test_every_command_has_help_with_an_example(command):
    assert isinstance(command, click.Command) and "Example" in command.help


def test_a_concept_for_a_deeper_model_names_the_concept_not_the_layer(filled, model):
    """`mval score` has no --layer: it said "--layer 3: the model has 2 layers"."""
    deeper = ProbeDirection(CONCEPT.vector, 3, "mean")
    request = ScoreRequest(deeper, batch_size=7)
    with open_store(filled) as con, pytest.raises(MvalError, match=r"^--concept: the concept is read at layer 3, but "
                                                                    r"the model has layers 0..2; train or bring a"):
        score_dataset(con, "sft", "probe", "deep", model, make_scorer("probe", request), request)


@pytest.mark.parametrize(("args", "match"), [
    # options of --direction given with --data were dropped without a word
    (["probe", "train", "--data", "{tmp}/labelled.jsonl", "--key", "w", "-o", "{tmp}/p.safetensors"],
     r"--key w: picks a tensor or row of a --direction file, but --data trains a probe on labelled text; leave --key "
     r"out \(or bring the vector with --direction FILE --key w\)"),
    (["probe", "train", "--data", "{tmp}/labelled.jsonl", "--feature", 3, "-o", "{tmp}/p.safetensors"],
     r"--feature 3: picks a tensor or row of a --direction file, .*; leave --feature out"),
    # a safetensors file was written under the name given, .npy or none
    (["probe", "train", "--data", "{tmp}/labelled.jsonl", "-o", "{tmp}/p.npy"],
     r"--output .*p.npy: unknown file type .npy; use .safetensors"),
    # the probe overwrote the vector it was made from, or landed where the model folder reads weights
    (["probe", "train", "--direction", "{tmp}/v.safetensors", "-o", "{tmp}/./v.safetensors"],
     r"--output .*v.safetensors: is the --direction file this command reads; writing there would overwrite it"),
    (["probe", "train", "--data", "{tmp}/labelled.jsonl", "-o", "{model}/model-probe.safetensors"],
     r"--output .*model-probe.safetensors: the --model folder reads every model\*.safetensors in it as its weights"),
    # --damping was ignored by the methods that have no damping
    (["score", "{store}", "--dataset", "sft", "--concept", "{tmp}/c.safetensors", "--method", "gradient",
      "--queries", "{tmp}/labelled.jsonl", "--damping", 0.1],
     r"--damping 0.1: only --method influence and test-influence use it; leave it out for --method gradient"),
    # the queries were read and ignored by a method that scores each example on its own
    (["score", "{store}", "--dataset", "sft", "--concept", "{tmp}/c.safetensors", "--method", "probe",
      "--queries", "{tmp}/labelled.jsonl"],
     r"--queries .*labelled.jsonl: --method probe does not read a query set \(it scores each example on its own\); "
     r"leave --queries out"),
    # a projection wider than the model: [batch, 10^9] zeros filled the memory
    (["score", "{store}", "--dataset", "sft", "--concept", "{tmp}/c.safetensors", "--method", "gradient",
      "--queries", "{tmp}/labelled.jsonl", "--proj-dim", 10**9],
     r"--proj-dim 1000000000: more than the model's [0-9,]+ trainable parameters, so projecting would not compress "
     r"the gradients; give at most [0-9]+$"),
    # the cache under a file: "{tmp}/afile/cache/<key>: Not a directory", after the queries' forward passes
    (["score", "{store}", "--dataset", "sft", "--concept", "{tmp}/c.safetensors", "--method", "gradient",
      "--queries", "{tmp}/labelled.jsonl", "--cache-dir", "{tmp}/afile/cache"],
     r"--cache-dir .*afile/cache: .*afile is a file, not a folder; give another --cache-dir"),
    # a probe for a model of another width names the flag
    (["score", "{store}", "--dataset", "sft", "--concept", "{tmp}/narrow.safetensors"],
     r"--concept: the concept's direction has 8 dims but the model's activations have 16; train or bring a concept"),
], ids=["key-with-data", "feature-with-data", "npy-output", "output-is-the-direction", "output-is-a-weights-shard",
        "damping-without-influence", "queries-with-probe", "huge-projection", "cache-under-a-file", "concept-of-another-width"])
def test_options_that_would_be_ignored_or_overwrite_an_input_are_refused(cli, filled, model_dir, tmp_path, args,
                                                                         match):
    write_jsonl(tmp_path / "labelled.jsonl", [{"text": f"you are {w} .", "label": int(w in HOSTILE)}
                                              for w in FRIENDLY + HOSTILE])
    save_file({"direction": np.ones(16, np.float32)}, str(tmp_path / "v.safetensors"))
    CONCEPT.save(tmp_path / "c.safetensors")
    ProbeDirection(np.ones(8, np.float32), 1, "mean").save(tmp_path / "narrow.safetensors")
    (tmp_path / "afile").write_text("not a folder")
    before = {p: p.read_bytes() for p in (*tmp_path.iterdir(), *model_dir.iterdir()) if p.is_file()}
    args = [str(a).format(tmp=tmp_path, store=filled, model=model_dir) for a in args]
    model = ["--layer", "1"] if args[0] == "probe" else []
    result = cli(*args[:2], "--model", model_dir, *model, *args[2:])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and re.search(match, result.output), result.output
    after = {p: p.read_bytes() for p in (*tmp_path.iterdir(), *model_dir.iterdir()) if p.is_file()}
    assert after == before  # nothing written, nothing overwritten
