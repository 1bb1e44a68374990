"""`mval sokoban ...` as a user runs it: real level files, agents, stores and GIFs in a temporary folder."""

import json
import shutil
from dataclasses import replace

import duckdb
import pytest
import torch

from attribution.sokoban.agent import DRC, DRCConfig, agent_fingerprint, load_agent, save_agent
from attribution.sokoban.commands import sokoban
from attribution.sokoban.levels import read_levels, solve, write_levels
from attribution.sokoban.probes import load_probe
from conftest import run_cli
from mval.store import init_store


def run(*args, ok=True):
    return run_cli("sokoban", *args, ok=ok)


@pytest.fixture(scope="module")
def levels(tmp_path_factory):
    path = tmp_path_factory.mktemp("lv") / "levels.txt"
    out = json.loads(run("levels", "--size", 6, "--boxes", 2, "--n", 8, "--min-length", 8, "--seed", 4, "-o", path,
                         "--format", "json").output)
    assert out["levels"] == 8 and out["mean_optimal_length"] >= 8
    return path


def test_train_resume_and_play_a_tiny_agent(levels, tmp_path):
    args = ("train", "-o", tmp_path / "run", "--levels", levels, "--layers", 1, "--ticks", 1, "--channels", 4,
            "--num-envs", 8, "--rollout", 4, "--imitation-steps", 64, "--format", "json")
    first = json.loads(run(*args).output)[0]
    assert first["env_steps"] == 64 and first["updates"] == 2
    again = json.loads(run(*args[:-2], "--rl-steps", 32, "--format", "json").output)[0]
    assert again["env_steps"] == 96 and again["updates"] == 3
    out = json.loads(run("play", "--levels", levels, "--agent", tmp_path / "run" / "agent.safetensors",
                         "--thinking-steps", 2, "--max-steps", 20, "--format", "json").output)
    assert out["levels"] == 8 and 0 <= out["solve_rate"] <= 1 and out["thinking_steps"] == 2 and "mean_steps" in out


def test_a_resume_names_its_levels_by_content_and_lets_only_the_step_counts_grow(levels, tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    shutil.copy(levels, "levels.txt")
    args = ("train", "-o", tmp_path / "run", "--layers", 1, "--ticks", 1, "--channels", 4, "--num-envs", 8,
            "--rollout", 4, "--format", "json")
    assert json.loads(run(*args, "--levels", "levels.txt", "--imitation-steps", 32).output)[0]["updates"] == 1
    monkeypatch.chdir(tmp_path)  # the same file, another spelling: before, "--levels levels.txt (run) vs a/levels.txt"
    assert json.loads(run(*args, "--levels", "a/levels.txt", "--imitation-steps", 64).output)[0]["updates"] == 2
    shorter = run(*args, "--levels", "a/levels.txt", "--imitation-steps", 32, ok=False)
    assert shorter.exit_code == 2 and "different settings (--imitation-steps 64 (run) vs 32 (now))" in shorter.output
    write_levels(tmp_path / "other.txt", read_levels(levels).subset(range(4)))
    other = run(*args, "--levels", tmp_path / "other.txt", "--imitation-steps", 96, ok=False)
    assert other.exit_code == 2
    assert f"--levels {tmp_path}/other.txt: not the levels this run trained on (its copy is {tmp_path}/run/levels.txt)" \
        in other.output
    dropped = run(*args, "--imitation-steps", 96, ok=False)
    assert dropped.exit_code == 2 and "--levels a/levels.txt (run) vs None (now)" in dropped.output


def test_play_stores_episodes_renders_and_probes_with_the_shipped_agent(levels, tmp_path):
    store = init_store(tmp_path / "s.duckdb")
    out = json.loads(run("play", "--levels", levels, "--store", store, "--render", tmp_path / "p.gif",
                         "--format", "json").output)
    assert out["levels"] == 8 and out["frames"] >= 2 and (tmp_path / "p.gif").read_bytes()[:3] == b"GIF"
    run("play", "--levels", levels, "--store", store, "--thinking-steps", 1)
    con = duckdb.connect(str(store), read_only=True)
    rows = con.execute("SELECT run_id, count(*), sum(solved::INT), min(optimal_length) FROM sokoban_episodes "
                       "GROUP BY run_id ORDER BY min(thinking_steps)").fetchall()
    lengths = con.execute("SELECT optimal_length FROM sokoban_episodes WHERE thinking_steps = 0 "
                          "ORDER BY level_index").fetchall()
    con.close()
    assert len(rows) == 2 and rows[0][1] == 8 and rows[0][0] == out["run_id"] and rows[0][2] == out["solved"]
    lv = read_levels(levels)
    assert [r[0] for r in lengths] == [len(solve(lv.level(i))) for i in range(len(lv))]
    assert min(r[0] for r in lengths) >= 8

    probe = json.loads(run("probe", "--levels", levels, "-o", tmp_path / "push.safetensors", "--format", "json").output)
    sources = {p["source"] for p in probe["probes"]}
    assert {"obs", "h1", "c1", "all"} <= sources and probe["saved"] and (tmp_path / "push.safetensors").is_file()
    assert all(0 <= p["macro_f1"] <= 1 for p in probe["probes"])
    run("play", "--levels", levels, "--render", tmp_path / "plan.gif", "--probe", tmp_path / "push.safetensors")
    edit = json.loads(run("edit", "--levels", levels, "--probe", tmp_path / "push.safetensors", "--format", "json").output)
    assert 0 <= edit["success_rate"] <= 1 and edit["levels"] >= 1


def test_refusals_are_one_line_and_exit_2(levels, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("; 0\n#####\n#@$.#\n#$  #\n#####\n")
    result = run("play", "--levels", bad, ok=False)
    assert result.exit_code == 2 and "line 2: level has 2 boxes and 1 targets" in result.output
    big = tmp_path / "big.txt"
    run("levels", "--size", 7, "--boxes", 1, "--n", 2, "-o", big)
    result = run("play", "--levels", big, ok=False)
    assert result.exit_code == 2 and "trained on 6x6" in result.output
    result = run("play", "--levels", levels, "--store", tmp_path / "none.duckdb", ok=False)
    assert result.exit_code == 2 and "no such store" in result.output
    result = run("levels", "--size", 6, "--n", 0, "-o", tmp_path / "x.txt", ok=False)
    assert result.exit_code == 2 and "--n 0" in result.output
    result = run("play", "--levels", levels, "--probe", tmp_path / "p.safetensors", ok=False)
    assert result.exit_code == 2 and "drawn in the GIF; give --render FILE.gif too" in result.output


def test_every_command_has_help_with_an_example():
    for name, command in sokoban.commands.items():
        text = run(name, "--help").output
        assert "Example:" in text and f"mval sokoban {name}" in text


@pytest.fixture(scope="module")
def tiny(levels, tmp_path_factory):
    """Two untrained 1-layer, 4-channel agents (same shape, other weights), a move probe fit on agent0, and
    that probe as mval saved it before it recorded the agent's fingerprint."""
    folder = tmp_path_factory.mktemp("tiny")
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_agent(DRC(DRCConfig(layers=1, ticks=1, channels=4)), folder / f"agent{seed}.safetensors")
    run("probe", "--levels", levels, "--agent", folder / "agent0.safetensors", "--label", "move",
        "-o", folder / "move.safetensors")
    replace(load_probe(folder / "move.safetensors"), fingerprint=None).save(folder / "unrecorded.safetensors")
    replace(load_probe(folder / "move.safetensors"), agent="shipped", fingerprint="0" * 16).save(folder / "stale.safetensors")
    return folder


def test_a_probe_of_the_shipped_agent_as_it_was_asks_for_a_refit_only(levels, tiny):
    """Fit on the shipped agent, whose weights have changed since: "omit --agent" would be no help."""
    result = run("edit", "--levels", levels, "--probe", tiny / "stale.safetensors", ok=False)
    assert result.exit_code == 2, result.output
    assert "probe fit on the shipped agent (weights 0000000000000000), not on the shipped agent as it is now" in result.output
    assert "omit --agent" not in result.output and "; refit the probe on the shipped agent" in result.output


def test_a_probe_is_read_with_the_agent_it_was_fit_on(levels, tiny, tmp_path):
    agent0 = tiny / "agent0.safetensors"
    probe = load_probe(tiny / "move.safetensors")
    assert probe.agent == str(agent0) and probe.fingerprint == agent_fingerprint(load_agent(agent0))
    made = json.loads(run("concept", tiny / "move.safetensors", "--direction", "left", "--agent", agent0,
                          "-o", tmp_path / "c.safetensors", "--format", "json").output)[0]
    assert made["layer"] == 1 + 1 and made["d_model"] == 8  # layer D + d of the 1-layer agent, [h, c] of 4 channels
    out = json.loads(run("play", "--levels", levels, "--agent", agent0, "--max-steps", 5, "--render",
                         tmp_path / "p.gif", "--probe", tiny / "move.safetensors", "--format", "json").output)
    assert out["frames"] >= 2


@pytest.mark.parametrize("command", ["concept", "play", "edit"])
@pytest.mark.parametrize("probe, agent, message", [
    ("move", None, "move.safetensors: probe fit on {tiny}/agent0.safetensors (weights {fp}), not on the shipped "
                   "agent (weights"),
    ("move", "agent1", "probe fit on {tiny}/agent0.safetensors (weights {fp}), not on {tiny}/agent1.safetensors"),
    ("unrecorded", None, "probe fit on {tiny}/agent0.safetensors reads 4 features on h1, but the shipped agent has "
                         "16 on h1; pass --agent {tiny}/agent0.safetensors, or refit"),
], ids=["shipped-agent", "same-shape-other-weights", "no-fingerprint-other-shape"])
def test_a_probe_fit_on_another_agent_is_refused(levels, tiny, tmp_path, command, probe, agent, message):
    path = tiny / f"{probe}.safetensors"
    args = {"concept": (path, "--direction", "left", "-o", tmp_path / "c.safetensors"),
            "play": ("--levels", levels, "--render", tmp_path / "p.gif", "--probe", path),
            "edit": ("--levels", levels, "--probe", path)}[command]
    agent_args = ("--agent", tiny / f"{agent}.safetensors") if agent else ()
    result = run(command, *args, *agent_args, ok=False)
    fp = agent_fingerprint(load_agent(tiny / "agent0.safetensors"))
    assert result.exit_code == 2 and message.format(tiny=tiny, fp=fp) in result.output
    assert result.output.count("\n") == 1 and not list(tmp_path.iterdir())


MIXED = "; 0\n######\n#@   #\n#  $.#\n#    #\n#$  .#\n######\n\n; 1\n######\n#@   #\n#  $.#\n#    #\n#    #\n######\n"
TRAIN = ("train", "-o", "{tmp}/run", "--levels", "{levels}", "--layers", 1, "--ticks", 1, "--channels", 4,
         "--num-envs", 4, "--rollout", 4, "--imitation-steps", 16)


@pytest.mark.parametrize("args, message", [
    ((*TRAIN, "--num-envs", 0), "--num-envs 0: must be at least 1"),
    ((*TRAIN, "--rollout", 0), "--rollout 0: must be at least 1"),
    ((*TRAIN, "--max-steps", 0), "--max-steps 0: must be at least 1"),
    ((*TRAIN, "--imitation-steps", -5), "--imitation-steps -5: must be 0 or more"),
    ((*TRAIN, "--imitation-steps", 0), "--imitation-steps 0 --rl-steps 0: nothing to train"),
    ((*TRAIN, "--lr", -1), "--lr -1.0: must be more than 0"),
    ((*TRAIN, "--threads", 0), "--threads 0: must be at least 1"),
    ((*TRAIN, "--time-limit", -1), "--time-limit -1.0: must be more than 0 seconds"),
    (("probe", "--levels", "{levels}", "--top", 0), "--top 0: must be at least 1"),
    (("probe", "--levels", "{levels}", "-o", "{levels}"), "--output {levels}: is the --levels file this command reads"),
    (("probe", "--levels", "{levels}", "--concept-out", "{levels}"), "--concept-out {levels}: is the --levels file"),
    (("probe", "--levels", "{levels}", "--concept-out", "{tmp}/none/c.safetensors"), "folder {tmp}/none does not exist"),
    (("probe", "--levels", "{levels}", "-o", "{tmp}/p.safetensors", "--concept-out", "{tmp}/./p.safetensors"),
     "--concept-out {tmp}/./p.safetensors: is also -o"),
    (("concept", "{probe}", "--agent", "{agent}", "--direction", "left", "-o", "{probe}"),
     "--output {probe}: is the PROBE file this command reads; writing there would overwrite it"),
    (("dataset", "{levels}", "-o", "{levels}"), "--output {levels}: is the SOURCE file this command reads"),
    (("dataset", "{levels}", "-o", "{tmp}/d.txt"), "-o {tmp}/d.txt: unknown file type .txt; use .jsonl, .ndjson"),
    (("play", "--levels", "{levels}", "--render", "{levels}"), "--render {levels}: is the --levels file"),
    (("play", "--levels", "{tmp}/mixed.txt"), "{tmp}/mixed.txt: levels have different box counts (level 0 has 2, "
                                              "level 1 has 1)"),
    (("play", "--levels", "{levels}", "--agent", "{tmp}/damaged.safetensors"),
     "{tmp}/damaged.safetensors: damaged agent file (its config and weights do not make a DRC agent: DRCConfig"),
], ids=["num-envs", "rollout", "max-steps", "imitation-steps", "no-steps", "lr", "threads", "time-limit", "top",
        "probe-over-levels", "concept-out-over-levels", "concept-out-folder", "concept-out-is-o",
        "concept-over-probe", "dataset-over-levels", "dataset-txt", "render-over-levels", "mixed-box-counts", "damaged-agent"])
def test_bad_options_and_outputs_over_inputs_are_refused_in_one_line(levels, tiny, tmp_path, args, message):
    """Exit 2 with one `Error:` line naming the flag or file, no traceback, and every input file left as it was."""
    import shutil

    from safetensors.torch import save_file

    mine = tmp_path / "levels.txt"
    shutil.copy(levels, mine)
    shutil.copy(tiny / "move.safetensors", tmp_path / "probe.safetensors")
    (tmp_path / "mixed.txt").write_text(MIXED)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "damaged.safetensors"),
              metadata={"format": "mval-sokoban-drc-1", "config": '{"layerz": 2}'})
    names = {"levels": mine, "tmp": tmp_path, "probe": tmp_path / "probe.safetensors", "agent": tiny / "agent0.safetensors"}
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    result = run(*[str(a).format(**names) for a in args], ok=False)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert message.format(**names) in result.output
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "run" / "state.json").exists()


def _train_args(out, levels) -> list:
    return [out if a == "{tmp}/run" else levels if a == "{levels}" else a for a in TRAIN]


def test_training_into_a_folder_of_other_files_is_refused_and_leaves_them(levels, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "levels.txt").write_text("my own levels\n")
    (mine / "episodes.csv").write_text("my notes\n")
    result = run(*_train_args(mine, levels), ok=False)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert f"-o {mine}: folder holds files that are not a training run (episodes.csv, levels.txt)" in result.output
    assert (mine / "levels.txt").read_text() == "my own levels\n" and (mine / "episodes.csv").read_text() == "my notes\n"
    assert sorted(p.name for p in mine.iterdir()) == ["episodes.csv", "levels.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    run(*_train_args(empty, levels))  # an empty folder is fine


def test_ctrl_c_stops_training_after_a_whole_update_with_a_checkpoint_to_resume(levels, tmp_path, monkeypatch):
    """A first Ctrl-C finishes the update, checkpoints and exits 130; rerunning the command resumes from there."""
    import os
    import signal

    from attribution.sokoban import train as train_module

    calls = {"n": 0}
    real_step = train_module.SokobanVecEnv.step

    def step_then_ctrl_c(self, actions):
        calls["n"] += 1
        if calls["n"] == 2:  # in the middle of the first update's rollout
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, actions)

    monkeypatch.setattr(train_module.SokobanVecEnv, "step", step_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    args = [*_train_args(tmp_path / "run", levels)[:-1], 160, "--format", "json"]
    result = run(*args, ok=False)
    assert result.exit_code == 130, result.output
    assert f"Error: interrupted; checkpoint saved in {tmp_path}/run at 16 env steps" in result.output
    assert signal.getsignal(signal.SIGINT) is handler
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["updates"] == 1 and state["env_steps"] == 16
    monkeypatch.setattr(train_module.SokobanVecEnv, "step", real_step)
    resumed = json.loads(run(*args).output)[0]
    assert resumed["updates"] == 10 and resumed["env_steps"] == 160
