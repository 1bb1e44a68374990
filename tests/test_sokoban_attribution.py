"""Training levels as an attribution dataset: recorded episodes, the agent as a ConceptModel, `mval score/curate`."""

from __future__ import annotations

import json
from dataclasses import replace

import duckdb
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attribution.examples import Example, read_jsonl
from attribution.probes import load_probe
from attribution.sokoban.agent import SHIPPED_AGENT, load_agent
from attribution.sokoban.concept_model import load_agent_model, plan_concept
from attribution.sokoban.dataset import Episode, decode, expert_episode, level_example, level_id, replay
from attribution.sokoban.levels import generate_levels, read_levels, write_levels
from attribution.sokoban.probes import PlanProbe
from conftest import run_cli
from mval.errors import MvalError
from mval.store import init_store


mval = run_cli


@pytest.fixture(scope="module")
def level_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lv") / "levels.txt"
    write_levels(path, generate_levels(6, 6, 2, min_length=8, seed=11))
    return path


@pytest.fixture(scope="module")
def agent():
    return load_agent_model(SHIPPED_AGENT)


@pytest.fixture(scope="module")
def concept_file(tmp_path_factory, agent):
    rng = np.random.default_rng(0)
    c = agent.module.config.channels
    probe = PlanProbe(rng.normal(size=(5, c)).astype(np.float32), np.zeros(5, np.float32),
                      np.zeros(c, np.float32), np.ones(c, np.float32), "c2", "box")
    path = tmp_path_factory.mktemp("c") / "push-left.safetensors"
    plan_concept(probe, "left", agent.module.config.layers).save(path)
    return path


def test_train_records_episodes_and_dataset_ids_are_stable(level_file, tmp_path):
    run = tmp_path / "run"
    mval("sokoban", "train", "-o", run, "--levels", level_file, "--layers", 1, "--ticks", 1, "--channels", 4,
         "--num-envs", 6, "--rollout", 8, "--imitation-steps", 96, "--max-steps", 10)
    lines = [json.loads(x) for x in (run / "episodes.jsonl").read_text().splitlines()]
    levels = read_levels(level_file)
    assert lines and {"level_index", "phase", "actions", "targets", "rewards", "solved"} <= set(lines[0])
    for record in lines:  # the recorded moves replay to the recorded rewards
        _, rewards, _ = replay(levels.level(record["level_index"]), record["actions"])
        assert np.allclose(rewards, record["rewards"], atol=0.01)
        assert len(record["targets"]) == len(record["actions"]) and all(-1 <= t < 4 for t in record["targets"])
        assert record["phase"] == "imitation"

    for name in ("a", "b"):
        mval("sokoban", "dataset", run, "-o", tmp_path / f"{name}.jsonl")
    mval("sokoban", "dataset", level_file, "-o", tmp_path / "c.jsonl")
    a, b, c = (read_jsonl(tmp_path / f"{n}.jsonl")[0] for n in "abc")
    assert a == b == c and len(a) == len(levels)
    assert [e.example_id for e in a] == [level_id(levels.level(i)) for i in range(len(levels))]
    assert all(decode(e)[1].actions == decode(e)[1].targets for e in a)  # expert demonstrations

    store = init_store(tmp_path / "s.duckdb")
    out = json.loads(mval("sokoban", "dataset", run, "--episodes", "recorded", "-o", tmp_path / "r.jsonl",
                          "--store", store, "--dataset", "played", "--format", "json").output)[0]
    assert out["examples"] + out["skipped_levels"] == len(levels) and out["added"] == out["examples"]
    recorded = read_jsonl(tmp_path / "r.jsonl")[0]
    assert {e.example_id for e in recorded} <= {e.example_id for e in a}
    assert all(decode(e)[1].source == "recorded" for e in recorded)


@pytest.fixture(scope="module")
def recorded_lines(level_file) -> list[str]:
    """Lines of episodes.jsonl as `mval sokoban train` writes them: the expert's episode of each level."""
    levels = read_levels(level_file)
    episodes = [expert_episode(levels.level(i)) for i in range(len(levels))]
    return [json.dumps({"level_index": i, "phase": "imitation", "env_step": 0, "solved": True, "actions": list(e.actions),
                        "targets": list(e.targets), "rewards": list(e.rewards)}, separators=(",", ":"))
            for i, e in enumerate(episodes)]


@pytest.mark.parametrize("tail, message", [  # what follows the 6 good lines; GOOD: a good line, FAR: level_index 6
    ('{"level_index":0,"phase":"imi', None),  # no newline: cut off mid-write by a killed run, skipped
    ('{"level_index":0,"phase":"imi\n', "not valid JSON"),
    ('{"level_index":0,"phase":"imi\nGOOD', "not valid JSON"),
    ('{"level_index":0}\n', "a recorded episode needs level_index, phase, env_step, solved, actions, targets, "
                           "rewards; missing phase"),
    ("FAR\n", "level_index 6 is outside 0..5, the levels of the run's levels.txt"),
], ids=["killed-mid-write", "bad-json-last", "bad-json-inside", "missing-key", "level-index"])
def test_recorded_episodes_skip_a_cut_off_last_line_and_refuse_bad_ones(level_file, recorded_lines, tmp_path, tail,
                                                                        message):
    levels = read_levels(level_file)
    run = tmp_path / "run"
    run.mkdir()
    write_levels(run / "levels.txt", levels)
    lines = recorded_lines  # 6 good lines, one per level
    far = lines[0].replace('"level_index":0,', f'"level_index":{len(levels)},')
    (run / "episodes.jsonl").write_text("\n".join(lines) + "\n" + tail.replace("GOOD", lines[0]).replace("FAR", far))
    result = mval("sokoban", "dataset", run, "--episodes", "recorded", "-o", tmp_path / "r.jsonl", "--format", "json",
                  ok=message is None)
    if message is None:
        assert json.loads(result.output)[0]["examples"] == len(levels)
        made = read_jsonl(tmp_path / "r.jsonl")[0]
        assert [decode(e)[1].actions for e in made] == [tuple(json.loads(x)["actions"]) for x in lines]
    else:
        assert result.exit_code == 2 and f"{run / 'episodes.jsonl'}: line 7: {message}" in result.output
        assert result.output.count("\n") == 1


def test_concept_model_shapes_and_loss_by_hand(level_file, agent):
    levels = read_levels(level_file)
    examples = [level_example(levels.level(i), expert_episode(levels.level(i))) for i in range(3)]
    level, episode = decode(examples[1])
    episode = Episode(episode.actions, (-1,) + episode.targets[1:])  # a step with no target is not taught
    examples[1] = level_example(level, episode)
    batch = agent.encode(examples)
    lengths = [len(decode(e)[1].actions) for e in examples]
    t_max = max(lengths)
    assert batch.inputs["obs"].shape == (3, t_max, 4, 6, 6) and batch.mask.sum(1).tolist() == lengths
    assert agent.hidden_states(batch, 0).shape == (3, t_max, agent.d_model) == (3, t_max, 32)
    assert agent.hidden_states(batch, 2).shape == (3, t_max, 32)

    net = load_agent(SHIPPED_AGENT)
    obs, _, _ = replay(level, episode.actions)
    state, nll = net.initial_state(1), []
    with torch.no_grad():
        for t, target in enumerate(episode.targets):
            logits, _, state = net.step(torch.from_numpy(obs[t : t + 1]), state)
            if target >= 0:
                nll.append(float(F.cross_entropy(logits, torch.tensor([target]))))
        losses = agent.example_losses(batch)
        alone = agent.example_losses(agent.encode(examples[1:2]))  # padding does not change an example's loss
    assert losses.shape == (3,)
    assert float(losses[1]) == pytest.approx(np.mean(nll), rel=1e-5)
    assert float(alone[0]) == pytest.approx(float(losses[1]), rel=1e-5)


def hand_probe_score(net, example: Example, vector: np.ndarray, layer: int) -> float:
    """Mean over steps of v . mean over squares of [h_layer, c_layer], from the agent's own step()."""
    level, episode = decode(example)
    obs, _, _ = replay(level, episode.actions)
    state, values = net.initial_state(1), []
    with torch.no_grad():
        for t in range(len(obs)):
            _, _, state = net.step(torch.from_numpy(obs[t : t + 1]), state)
            x = torch.cat([state[0][layer - 1], state[1][layer - 1]], 1)[0].mean((1, 2)).numpy()
            values.append(float(vector @ x))
    return float(np.mean(values))


def test_mval_score_probe_gradient_random_resume_and_curate(level_file, concept_file, tmp_path):
    store = init_store(tmp_path / "s.duckdb")
    data = tmp_path / "levels.jsonl"
    mval("sokoban", "dataset", level_file, "-o", data, "--store", store, "--dataset", "levels")
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(l for i, l in enumerate(data.read_text().splitlines(True)) if i < 2))
    common = ("score", store, "--model", SHIPPED_AGENT, "--dataset", "levels", "--concept", concept_file,
              "--batch-size", 4, "--format", "json")
    probe_rows = json.loads(mval(*common, "--method", "probe", "--top", 3).stdout)
    assert len(probe_rows) == 3
    examples = read_jsonl(data)[0]
    concept, net = load_probe(concept_file), load_agent(SHIPPED_AGENT)
    by_hand = {e.example_id: hand_probe_score(net, e, concept.vector, concept.layer) for e in examples}
    con = duckdb.connect(str(store), read_only=True)
    stored = dict(con.execute("SELECT example_id, score FROM scores WHERE method = 'probe'").fetchall())
    con.close()
    assert stored.keys() == by_hand.keys()
    assert all(stored[k] == pytest.approx(by_hand[k], rel=1e-4, abs=1e-6) for k in stored)
    assert [r["example_id"] for r in probe_rows] == sorted(by_hand, key=by_hand.get, reverse=True)[:3]

    first = mval(*common, "--method", "gradient", "--queries", queries, "--proj-dim", 256)
    con = duckdb.connect(str(store))
    before = dict(con.execute("SELECT example_id, score FROM scores WHERE method = 'gradient'").fetchall())
    con.execute("DELETE FROM scores WHERE method = 'gradient' AND example_id IN "
                "(SELECT example_id FROM scores WHERE method = 'gradient' ORDER BY example_id LIMIT 2)")
    con.close()
    again = mval(*common, "--method", "gradient", "--queries", queries, "--proj-dim", 256)
    assert "6 examples scored now" in first.stderr and "2 examples scored now, 4 already scored" in again.stderr
    con = duckdb.connect(str(store), read_only=True)
    after = dict(con.execute("SELECT example_id, score FROM scores WHERE method = 'gradient'").fetchall())
    con.close()
    assert after.keys() == before.keys() and all(after[k] == pytest.approx(before[k], rel=1e-5) for k in after)
    mval(*common, "--method", "random")

    out = tmp_path / "kept.txt"
    mval("curate", store, "--dataset", "levels", "--method", "gradient", "--drop-top", 2, "-o", out)
    kept = read_levels(out)
    flagged = set(sorted(after, key=after.get, reverse=True)[:2])
    assert len(kept) == 4 and {level_id(kept.level(i)) for i in range(4)} == set(by_hand) - flagged
    assert out.read_text().startswith("; 0\n")
    upper = tmp_path / "KEPT.TXT"  # the suffix check took .TXT as level text, the writer wrote JSON lines
    mval("curate", store, "--dataset", "levels", "--method", "gradient", "--drop-top", 2, "-o", upper)
    assert upper.read_text() == out.read_text()


def test_bad_input_is_refused_in_one_line(level_file, concept_file, tmp_path):
    store = init_store(tmp_path / "s.duckdb")
    mval("sokoban", "dataset", level_file, "-o", tmp_path / "l.jsonl", "--store", store, "--dataset", "levels")
    text = tmp_path / "t.jsonl"
    text.write_text('{"id": "a", "text": "not a level"}\n')
    mval("examples", "add", store, "prose", text)
    chat = tmp_path / "c.jsonl"
    chat.write_text(json.dumps({"id": "b", "prompt": "#####\n#@$.#\n#####", "response": "push right"}) + "\n")
    mval("examples", "add", store, "chat", chat)

    def refused(*args, match):
        result = mval(*args, ok=False)
        assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1

    base = ("score", store, "--dataset", "levels", "--method", "probe")
    refused(*base, "--model", concept_file, "--concept", concept_file, match="--model")
    refused(*base, "--model", SHIPPED_AGENT, "--concept", SHIPPED_AGENT, match="not an mval probe file")
    refused("score", store, "--dataset", "prose", "--method", "probe", "--model", SHIPPED_AGENT,
            "--concept", concept_file, match="example 'a': no level in 'prompt'")
    refused("score", store, "--dataset", "chat", "--method", "probe", "--model", SHIPPED_AGENT,
            "--concept", concept_file, match="example 'b': response is not a Sokoban episode")
    mval("score", store, "--model", SHIPPED_AGENT, "--dataset", "prose", "--concept", concept_file,
         "--method", "random")
    refused("curate", store, "--dataset", "prose", "--method", "random", "--drop-top", 0, "-o", tmp_path / "x.txt",
            match="Sokoban level datasets only")
    refused("sokoban", "dataset", tmp_path / "none", "-o", tmp_path / "x.jsonl", match="no such run folder")
    refused("sokoban", "dataset", level_file, "--episodes", "recorded", "-o", tmp_path / "x.jsonl",
            match="is a level file")
    refused("sokoban", "dataset", level_file, "-o", tmp_path / "x.jsonl", "--store", store, match="together")
    big = tmp_path / "big.txt"
    write_levels(big, generate_levels(2, 7, 1, seed=0))
    mval("sokoban", "dataset", big, "-o", tmp_path / "big.jsonl", "--store", store, "--dataset", "big")
    refused("score", store, "--dataset", "big", "--method", "probe", "--model", SHIPPED_AGENT,
            "--concept", concept_file, match="trained on 6x6")
    c = load_agent(SHIPPED_AGENT).config.channels
    made = PlanProbe(np.eye(5, c), np.zeros(5), np.zeros(c), np.ones(c), "h1", "box", fingerprint="0" * 16)
    plan_concept(made, "left", 2).save(tmp_path / "other-agent.safetensors")
    refused(*base, "--model", SHIPPED_AGENT, "--concept", tmp_path / "other-agent.safetensors",
            match="made for the agent with weights 0000000000000000, not this one")
    plan_concept(replace(made, fingerprint=None), "left", 3, "player").save(tmp_path / "deeper.safetensors")
    refused(*base, "--model", SHIPPED_AGENT, "--concept", tmp_path / "deeper.safetensors",  # layer 1 + 3, not 1 + 2
            match="made from h1 of an agent of another depth (layer 4; this agent has depth 2, layers 1..2 and 3..4")
    plan_concept(replace(made, source="h3", fingerprint=None), "left", 3).save(tmp_path / "h3.safetensors")
    refused(*base, "--model", SHIPPED_AGENT, "--concept", tmp_path / "h3.safetensors",  # layer 3 is h1 at the player
            match="made from h3 of an agent of another depth (layer 3; this agent has depth 2")
    probe = PlanProbe(*(np.zeros((5, 4)), np.zeros(5), np.zeros(4), np.ones(4)), "obs", "box")
    with pytest.raises(MvalError, match="one layer's state"):
        plan_concept(probe, "left", 2)
    with pytest.raises(MvalError, match="--direction"):
        plan_concept(probe, "north", 2)


def test_plan_concept_is_the_probe_direction_averaged_over_squares(agent):
    rng = np.random.default_rng(1)
    c = agent.module.config.channels
    probe = PlanProbe(rng.normal(size=(5, c)), rng.normal(size=5), rng.normal(size=c), rng.random(c) + 0.5, "c1", "box")
    concept = plan_concept(probe, "left", agent.module.config.layers)
    h, cell = rng.normal(size=(36, c)), rng.normal(size=(36, c))  # one board's h1 and c1 at its 36 squares
    u = probe.direction(2)
    assert concept.layer == 1 and concept.position == "mean" and not concept.vector[:c].any()
    assert concept.vector @ np.concatenate([h, cell], 1).mean(0) == pytest.approx((cell @ u).mean(), abs=1e-5)


def test_player_square_layers_read_the_state_where_the_player_stands(level_file, agent):
    levels = read_levels(level_file)
    examples = [level_example(levels.level(i), expert_episode(levels.level(i))) for i in range(2)]
    batch = agent.encode(examples)
    depth = agent.module.config.layers
    assert agent.n_layers == 2 * depth
    net = load_agent(SHIPPED_AGENT)
    level, episode = decode(examples[1])
    obs, _, _ = replay(level, episode.actions)
    state, at_player, means = net.initial_state(1), [], []
    with torch.no_grad():
        for t in range(len(obs)):
            _, _, state = net.step(torch.from_numpy(obs[t : t + 1]), state)
            row, col = np.argwhere(obs[t, 3] > 0.5)[0]
            x = torch.cat([state[0][0], state[1][0]], 1)[0]  # layer 1: [2C, H, W]
            at_player.append(x[:, row, col].numpy())
            means.append(x.mean((1, 2)).numpy())
        player = agent.hidden_states(batch, depth + 1)[1, : len(obs)].numpy()
        mean = agent.hidden_states(batch, 1)[1, : len(obs)].numpy()
    assert np.allclose(player, np.stack(at_player), atol=1e-5) and np.allclose(mean, np.stack(means), atol=1e-5)
    assert not np.allclose(player, mean)


@pytest.mark.parametrize("label, squares, layer, suffix", [
    ("box", None, 2, ":left"), ("box", "player", 4, ":left:player"),
    ("move", None, 4, ":left:player"), ("move", "all", 2, ":left"),
])
def test_plan_concept_reads_at_the_chosen_squares(label, squares, layer, suffix):
    probe = PlanProbe(np.eye(5, 16), np.zeros(5), np.zeros(16), np.ones(16), "h2", label)
    concept = plan_concept(probe, "left", 2, squares)
    assert concept.layer == layer and concept.source.endswith(suffix) and concept.vector[:16].any()


def test_mval_sokoban_concept_squares_player_scores_at_the_player(level_file, tmp_path):
    rng = np.random.default_rng(2)
    probe = PlanProbe(rng.normal(size=(5, 16)).astype(np.float32), np.zeros(5, np.float32),
                      np.zeros(16, np.float32), np.ones(16, np.float32), "c1", "move")
    probe.save(tmp_path / "move.safetensors")
    out = json.loads(mval("sokoban", "concept", tmp_path / "move.safetensors", "--direction", "left",
                          "-o", tmp_path / "c.safetensors", "--format", "json").stdout)[0]
    assert out["layer"] == 3 and out["source"].endswith(":player")  # D + d = 2 + 1
    store = init_store(tmp_path / "s.duckdb")
    mval("sokoban", "dataset", level_file, "-o", tmp_path / "l.jsonl", "--store", store, "--dataset", "levels")
    mval("score", store, "--model", SHIPPED_AGENT, "--dataset", "levels", "--concept", tmp_path / "c.safetensors",
         "--method", "probe")
    mval("sokoban", "concept", tmp_path / "move.safetensors", "--direction", "left", "--squares", "bogus",
         "-o", tmp_path / "x.safetensors", ok=False)


def test_finetune_keeps_the_agent_at_the_start_of_each_epoch(level_file):
    from attribution.sokoban.finetune import finetune

    levels = read_levels(level_file)
    examples = [level_example(levels.level(i), expert_episode(levels.level(i))) for i in range(4)]
    base, trajectory = load_agent(SHIPPED_AGENT), []
    tuned = finetune(base, examples, epochs=2, lr=1e-3, batch_size=2, checkpoints=trajectory)
    weights = [dict(a.named_parameters())["policy.weight"].detach() for a in (base, *trajectory, tuned)]
    assert len(trajectory) == 2 and torch.equal(weights[0], weights[1])  # the first is the agent itself
    assert not torch.equal(weights[1], weights[2]) and not torch.equal(weights[2], weights[3])
    assert not trajectory[0].training and trajectory[0] is not base


def hand_gradients(net, example: Example, queries: list[Example], vector: np.ndarray,
                   layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """grad f and grad L(z), flat, by autograd through the agent's own step(): f = mean over the queries of the
    mean over steps of v . mean over squares of [h_layer, c_layer]; L(z) = mean cross-entropy of z's taught moves."""
    params = [p for p in net.parameters() if p.requires_grad]

    def run(e: Example):
        level, episode = decode(e)
        obs, _, _ = replay(level, episode.actions)
        state, values, nll = net.initial_state(1), [], []
        for t, target in enumerate(episode.targets):
            logits, _, state = net.step(torch.from_numpy(obs[t : t + 1]), state)
            x = torch.cat([state[0][layer - 1], state[1][layer - 1]], 1)[0].mean((1, 2))
            values.append(torch.as_tensor(vector) @ x)
            if target >= 0:
                nll.append(F.cross_entropy(logits, torch.tensor([target])))
        return torch.stack(values).mean(), torch.stack(nll).mean()

    def flat(output: torch.Tensor) -> torch.Tensor:
        grads = torch.autograd.grad(output, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])

    return flat(torch.stack([run(q)[0] for q in queries]).mean()), flat(run(example)[1])


def test_tracin_is_the_gradient_score_summed_over_checkpoints(level_file, concept_file, tmp_path):
    from attribution.sokoban.agent import save_agent
    from attribution.sokoban.finetune import finetune

    store = init_store(tmp_path / "s.duckdb")
    data, queries = tmp_path / "levels.jsonl", tmp_path / "q.jsonl"
    mval("sokoban", "dataset", level_file, "-o", data, "--store", store, "--dataset", "levels")
    queries.write_text("".join(data.read_text().splitlines(True)[:2]))
    examples, query_set = read_jsonl(data)[0], read_jsonl(queries)[0]
    trajectory: list = []
    tuned = finetune(load_agent(SHIPPED_AGENT), examples, epochs=3, lr=3e-3, batch_size=3, checkpoints=trajectory)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, a in enumerate(trajectory):
        save_agent(a, folder / f"agent-{i}.safetensors")
    save_agent(tuned, tmp_path / "tuned.safetensors")
    k = 8192
    common = ("score", store, "--model", tmp_path / "tuned.safetensors", "--dataset", "levels", "--concept",
              concept_file, "--queries", queries, "--proj-dim", k, "--format", "json")
    mval(*common, "--method", "tracin", "--checkpoint", folder)
    con = duckdb.connect(str(store), read_only=True)
    got = dict(con.execute("SELECT example_id, score FROM scores WHERE method = 'tracin'").fetchall())
    con.close()

    concept = load_probe(concept_file)
    exact, scale = [], []  # the projection's error is within 4 sd of sum_c |grad f| |grad L(z)| (JL)
    for e in examples:
        pairs = [hand_gradients(a, e, query_set, concept.vector, concept.layer) for a in trajectory]
        exact.append(-sum(float(gf @ gl) for gf, gl in pairs))
        scale.append(sum(float(gf.norm() * gl.norm()) for gf, gl in pairs))
    tracin = np.array([got[e.example_id] for e in examples])
    assert np.all(np.abs(tracin - exact) <= 4 * np.sqrt(2 / k) * np.array(scale)), (tracin, exact, scale)
    assert np.corrcoef(tracin, exact)[0, 1] > 0.9
    first = [-float(gf @ gl) for gf, gl in (hand_gradients(trajectory[0], e, query_set, concept.vector,
                                                             concept.layer) for e in examples)]
    assert np.corrcoef(first, exact)[0, 1] < 0.99  # the later checkpoints count: not the first one's ranking

    # one checkpoint, the model itself: the gradient score exactly (same projection)
    mval(*common, "--method", "tracin", "--checkpoint", tmp_path / "tuned.safetensors", "--concept-name", "one")
    mval(*common, "--method", "gradient", "--concept-name", "one")
    con = duckdb.connect(str(store), read_only=True)
    one = con.execute("SELECT t.score, g.score FROM scores t JOIN scores g USING (example_id) WHERE t.method = "
                      "'tracin' AND g.method = 'gradient' AND t.concept = 'one' AND g.concept = 'one'").fetchall()
    con.close()
    assert len(one) == len(examples) and all(t == pytest.approx(g, rel=1e-6) for t, g in one)


def test_tracin_refuses_bad_checkpoints_in_one_line(level_file, concept_file, tmp_path):
    from attribution.sokoban.agent import DRC, DRCConfig, save_agent

    store = init_store(tmp_path / "s.duckdb")
    data = tmp_path / "levels.jsonl"
    mval("sokoban", "dataset", level_file, "-o", data, "--store", store, "--dataset", "levels")
    folder, empty = tmp_path / "checkpoints", tmp_path / "empty"
    folder.mkdir()
    empty.mkdir()
    save_agent(load_agent(SHIPPED_AGENT), folder / "agent-0.safetensors")
    save_agent(DRC(DRCConfig(layers=2, ticks=2, channels=8)), tmp_path / "narrow.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    base = ("score", store, "--model", SHIPPED_AGENT, "--dataset", "levels", "--concept", concept_file,
            "--queries", data)

    def refused(*args, match):
        result = mval(*base, *args, ok=False)
        assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1

    refused("--method", "gradient", "--checkpoint", folder, match="only --method tracin reads checkpoints")
    refused("--method", "tracin", match="--method tracin needs the model's checkpoints: give --checkpoint PATH")
    refused("--method", "tracin", "--checkpoint", tmp_path / "none", match="no such file or folder")
    refused("--method", "tracin", "--checkpoint", empty, match="a folder with no models in it")
    run = tmp_path / "run"
    mval("sokoban", "train", "-o", run, "--levels", level_file, "--layers", 1, "--ticks", 1, "--channels", 4,
         "--num-envs", 4, "--rollout", 4, "--imitation-steps", 16)
    refused("--method", "tracin", "--checkpoint", run,
            match=f"a `mval sokoban train` run folder; give the agents it kept, --checkpoint {run / 'checkpoints'}")
    refused("--method", "tracin", "--checkpoint", tmp_path / "narrow.safetensors",
            match="not a checkpoint of --model (parameter ")
    refused("--method", "tracin", "--checkpoint", folder, "--checkpoint", SHIPPED_AGENT,
            match="the same weights as")
    refused("--method", "tracin", "--checkpoint", tmp_path / "junk.safetensors",
            match=f"--checkpoint {tmp_path / 'junk.safetensors'}")
    mval(*base, "--method", "tracin", "--checkpoint", folder, "--proj-dim", 64)
    refused("--method", "tracin", "--checkpoint", SHIPPED_AGENT, "--checkpoint", tmp_path / "narrow.safetensors",
            "--proj-dim", 64, match="not a checkpoint of --model")
    save_agent(DRC(load_agent(SHIPPED_AGENT).config), folder / "agent-1.safetensors")
    refused("--method", "tracin", "--checkpoint", folder, "--proj-dim", 64,
            match="already has tracin scores for concept 'push-left' made with a different checkpoint set")
    con = duckdb.connect(str(store), read_only=True)
    assert con.execute("SELECT count(*) FROM scores WHERE method = 'tracin'").fetchone()[0] == 6  # left as it was
    con.close()
