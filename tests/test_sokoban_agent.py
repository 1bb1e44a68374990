"""The DRC agent: shapes, state resets, thinking, safetensors round trip; a few training updates."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from attribution.sokoban.agent import DRC, DRCConfig, load_agent, reset_where, save_agent
from attribution.sokoban.levels import parse_levels, stack_levels, write_levels
from attribution.sokoban.play import play
from attribution.sokoban.train import Trainer, TrainConfig, gae
from mval.errors import MvalError

torch.set_num_threads(1)


def test_forward_shapes_reset_and_thinking():
    torch.manual_seed(0)
    agent = DRC(DRCConfig(layers=3, ticks=2, channels=8, height=6, width=7))
    obs = torch.rand(5, 4, 6, 7)
    state = agent.initial_state(5)
    assert state[0].shape == (3, 5, 8, 6, 7)
    logits, value, state = agent.step(obs, state)
    assert logits.shape == (5, 4) and value.shape == (5,)
    assert state[0].abs().sum() > 0
    h, c = reset_where(state, torch.tensor([True, False, True, False, False]))
    assert h[:, [0, 2]].abs().sum() == 0 and torch.equal(h[:, 1], state[0][:, 1]) and torch.equal(c[:, 3], state[1][:, 3])
    thought = agent.think(obs, agent.initial_state(5), 3)
    again = agent.initial_state(5)
    for _ in range(3):
        _, _, again = agent.step(obs, again)
    assert torch.allclose(thought[0], again[0])


def test_safetensors_round_trip_and_refusals(tmp_path):
    agent = DRC(DRCConfig(layers=1, ticks=1, channels=4))
    save_agent(agent, tmp_path / "a.safetensors")
    back = load_agent(tmp_path / "a.safetensors")
    obs = torch.rand(2, 4, 6, 6)
    with torch.no_grad():
        assert torch.allclose(agent.step(obs, agent.initial_state(2))[0], back.step(obs, back.initial_state(2))[0])
    torch.save(agent.state_dict(), tmp_path / "pickle.pt")
    with pytest.raises(MvalError, match="not a safetensors agent file"):
        load_agent(tmp_path / "pickle.pt")
    with pytest.raises(MvalError, match="no such agent file"):
        load_agent(tmp_path / "missing.safetensors")
    with pytest.raises(MvalError, match="trained on 6x6"):
        back.check_board(7, 7)


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.2], [0.1]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    adv, ret = gae(rewards, values, dones, torch.tensor([0.3]), gamma=0.9, lam=0.5)
    d2 = 2.0 + 0.9 * 0.3 - 0.1
    d1 = 0.0 - 0.2  # episode ends at t=1: no bootstrap
    d0 = 1.0 + 0.9 * 0.2 - 0.5
    assert torch.allclose(adv[:, 0], torch.tensor([d0 + 0.45 * d1, d1, d2]))
    assert torch.allclose(ret, adv + values)


# two mirror-image corridors: the agent must read the board to know whether to go left or right
TINY = ["#######\n#  @$.#\n#     #\n#######", "#######\n#.$@  #\n#     #\n#######"]


def test_a_few_imitation_and_actor_critic_updates_learn_tiny_levels_and_resume(tmp_path):
    write_levels(tmp_path / "tiny.txt", stack_levels([parse_levels(t)[0] for t in TINY]))
    cfg = TrainConfig(
        levels=str(tmp_path / "tiny.txt"), agent=DRCConfig(1, 1, 8, 4, 7, hidden=32), num_envs=16, rollout=4,
        imitation_steps=16 * 4 * 30, rl_steps=0, max_steps=10, lr=1e-2, seed=0,
    )
    result = Trainer(cfg, tmp_path / "run").run()
    assert result.updates == 30 and result.imitation_loss < 0.5  # from log(4) = 1.39
    levels = stack_levels([parse_levels(t)[0] for t in TINY])
    agent = load_agent(tmp_path / "run" / "agent.safetensors")
    assert play(agent, levels, max_steps=5).solve_rate == 1.0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["env_steps"] == 16 * 4 * 30
    episodes = (tmp_path / "run" / "episodes.csv").read_text().splitlines()
    assert episodes[0] == "level_id,phase,env_step,length,return,solved" and len(episodes) > 30
    longer = TrainConfig(**{**cfg.__dict__, "rl_steps": 16 * 4 * 3})
    resumed = Trainer(longer, tmp_path / "run").run()
    assert resumed.updates == 33 and resumed.env_steps == 16 * 4 * 33
    assert "rl" in (tmp_path / "run" / "episodes.csv").read_text()
    with pytest.raises(MvalError, match=r"different settings \(--lr 0.01 \(run\) vs 0.5 \(now\)\)"):
        Trainer(TrainConfig(**{**longer.__dict__, "lr": 0.5}), tmp_path / "run")
    assert np.isfinite(resumed.recent_solve_rate)


def test_a_resume_after_a_kill_leaves_only_the_episodes_its_checkpoint_covers(tmp_path):
    write_levels(tmp_path / "tiny.txt", stack_levels([parse_levels(t)[0] for t in TINY]))
    per_update = 4 * 4
    cfg = TrainConfig(levels=str(tmp_path / "tiny.txt"), agent=DRCConfig(1, 1, 4, 4, 7, hidden=16), num_envs=4,
                      rollout=4, imitation_steps=2 * per_update, max_steps=3, seed=0)
    longer = replace(cfg, imitation_steps=5 * per_update)
    clean, killed, unsaved = tmp_path / "clean", tmp_path / "killed", tmp_path / "unsaved"
    Trainer(cfg, clean).run()  # stops at its checkpoint after 2 updates
    shutil.copytree(clean, unsaved)
    (unsaved / "state.json").unlink()  # as if killed before its first checkpoint
    shutil.copytree(clean, killed)
    Trainer(longer, killed).run()  # plays on past the checkpoint ...
    for name in ("agent.safetensors", "optimizer.safetensors", "state.json"):  # ... and is killed before the next
        shutil.copy(clean / name, killed / name)
    with (killed / "episodes.jsonl").open("a") as f:
        f.write('{"level_index":1,"phase":"imi')  # mid-write
    episodes = {name: (clean / name).read_text() for name in ("episodes.csv", "episodes.jsonl")}
    assert all(len((killed / name).read_text()) > len(before) for name, before in episodes.items())
    Trainer(cfg, unsaved).run()
    Trainer(longer, killed).run()
    Trainer(longer, clean).run()
    for name, before in episodes.items():
        assert (unsaved / name).read_text() == before
        after = (clean / name).read_text()
        assert after.startswith(before) and len(after) > len(before) and (killed / name).read_text() == after


def _two_update_run(tmp_path) -> tuple[TrainConfig, TrainConfig]:
    """A tiny run checkpointed after 2 updates, in tmp_path / "run", and its config made 2 updates longer."""
    write_levels(tmp_path / "tiny.txt", stack_levels([parse_levels(t)[0] for t in TINY]))
    cfg = TrainConfig(levels=str(tmp_path / "tiny.txt"), agent=DRCConfig(1, 1, 4, 4, 7, hidden=16), num_envs=4,
                      rollout=4, imitation_steps=2 * 16, max_steps=3, seed=0)
    Trainer(cfg, tmp_path / "run").run()
    return cfg, replace(cfg, imitation_steps=4 * 16)


def test_a_save_killed_while_writing_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    _, longer = _two_update_run(tmp_path)
    run = tmp_path / "run"
    saved = {name: (run / name).read_bytes() for name in ("agent.safetensors", "optimizer.safetensors")}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("attribution.sokoban.train.save_file", killed)  # after the agent, before the optimizer
    with pytest.raises(KeyboardInterrupt):
        Trainer(longer, run).run()
    monkeypatch.undo()
    assert {name: (run / name).read_bytes() for name in saved} == saved and list(run.glob("*.tmp"))
    resumed = Trainer(longer, run)
    assert resumed.updates == 2 and not list(run.glob("*.tmp"))  # the half-written files are gone at once
    assert resumed.run().updates == 4 and not list(run.glob("*.tmp"))


def test_a_save_killed_while_writing_state_json_leaves_the_last_checkpoint_whole(tmp_path):
    _, longer = _two_update_run(tmp_path)
    run = tmp_path / "run"
    saved = {name: (run / name).read_bytes() for name in ("agent.safetensors", "optimizer.safetensors")}
    for name, data in saved.items():
        (run / f"{name}.tmp").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a next checkpoint, written whole ...
    whole = (run / "state.json").read_text()
    (run / "state.json.tmp").write_text(whole[: len(whole) // 2])  # ... but its state.json cut off mid-write
    resumed = Trainer(longer, run)
    assert resumed.updates == 2 and not list(run.glob("*.tmp"))
    assert {name: (run / name).read_bytes() for name in saved} == saved


@pytest.mark.parametrize("renamed", [1, 2])
def test_a_save_killed_between_its_renames_resumes_from_the_new_checkpoint(tmp_path, monkeypatch, renamed):
    cfg, longer = _two_update_run(tmp_path)
    run = tmp_path / "run"
    real_replace, calls = Path.replace, []

    def replace_then_die(self, target):
        if len(calls) == renamed:
            raise KeyboardInterrupt  # killed after `renamed` of the three renames
        calls.append(self.name)
        return real_replace(self, target)

    monkeypatch.setattr(Path, "replace", replace_then_die)
    killed = Trainer(longer, run)
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    monkeypatch.undo()
    assert killed.updates == 4 and (run / "state.json.tmp").is_file()
    assert json.loads((run / "state.json").read_text())["updates"] == 2  # the old state.json, the new agent
    resumed = Trainer(longer, run)
    assert resumed.updates == 4 and resumed.env_steps == killed.env_steps and not list(run.glob("*.tmp"))
    assert json.loads((run / "state.json").read_text())["updates"] == 4
    for name, tensor in killed.agent.state_dict().items():
        assert torch.equal(resumed.agent.state_dict()[name], tensor)
    for p, q in zip(killed.agent.parameters(), resumed.agent.parameters(), strict=True):
        assert torch.equal(killed.opt.state[p]["exp_avg_sq"], resumed.opt.state[q]["exp_avg_sq"])
    assert resumed.run().updates == 4 and not list(run.glob("*.tmp"))


def test_a_checkpoint_file_changed_by_hand_is_refused_on_resume(tmp_path):
    cfg, longer = _two_update_run(tmp_path)
    torch.manual_seed(1)
    save_agent(DRC(cfg.agent), tmp_path / "run" / "agent.safetensors")  # another agent, no checkpoint to roll forward
    with pytest.raises(MvalError, match=r"run: agent.safetensors is not the one state.json was saved with .*new -o$"):
        Trainer(longer, tmp_path / "run")


def test_a_staged_checkpoint_that_matches_its_files_nowhere_is_refused(tmp_path):
    cfg, longer = _two_update_run(tmp_path)
    run = tmp_path / "run"
    state = json.loads((run / "state.json").read_text())
    state["sha256"]["agent.safetensors"] = "0" * 64  # neither agent.safetensors.tmp nor agent.safetensors
    (run / "state.json.tmp").write_text(json.dumps(state))
    with pytest.raises(MvalError, match=r"run: agent.safetensors matches neither .*new -o$"):
        Trainer(longer, run)
    assert (run / "state.json.tmp").is_file()  # left as found


def test_a_fresh_start_does_not_reuse_the_levels_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    cfg, _ = _two_update_run(tmp_path)
    run = tmp_path / "run"
    (run / "state.json").unlink()  # as if killed before the first checkpoint: levels.txt is there, state.json not
    other = tmp_path / "other.txt"
    write_levels(other, stack_levels([parse_levels(t)[0] for t in TINY[:1]]))
    assert len(Trainer(replace(cfg, levels=str(other)), run).levels) == 1


def test_training_levels_changed_in_the_run_folder_are_refused_on_resume(tmp_path):
    _, longer = _two_update_run(tmp_path)
    levels = tmp_path / "run" / "levels.txt"
    levels.write_text(levels.read_text().replace("; 1", "; 2"))  # e.g. `mval curate -o run/levels.txt`
    with pytest.raises(MvalError, match=r"run/levels.txt: not the training levels this run was checkpointed with"):
        Trainer(longer, tmp_path / "run")


def test_a_level_too_big_for_imitation_is_named_by_file_and_index(tmp_path, monkeypatch):
    from functools import partial

    from attribution.sokoban import train as train_module

    monkeypatch.setattr(train_module, "state_distances", partial(train_module.state_distances, max_states=3))
    write_levels(tmp_path / "tiny.txt", stack_levels([parse_levels(t)[0] for t in TINY]))
    cfg = TrainConfig(levels=str(tmp_path / "tiny.txt"), agent=DRCConfig(1, 1, 4, 4, 7, hidden=16), num_envs=4,
                      rollout=4, imitation_steps=16, max_steps=3)
    with pytest.raises(MvalError, match=rf"^{tmp_path}/tiny.txt: level 0: level has more than 3 reachable states"):
        Trainer(cfg, tmp_path / "run")


def test_keep_every_keeps_the_agent_at_the_start_and_each_multiple_and_a_resume_drops_a_killed_runs(tmp_path):
    write_levels(tmp_path / "tiny.txt", stack_levels([parse_levels(t)[0] for t in TINY]))
    per_update = 4 * 4
    cfg = TrainConfig(levels=str(tmp_path / "tiny.txt"), agent=DRCConfig(1, 1, 4, 4, 7, hidden=16), num_envs=4,
                      rollout=4, imitation_steps=4 * per_update, max_steps=3, seed=0)
    torch.manual_seed(cfg.seed)
    start = DRC(cfg.agent)  # what a fresh Trainer makes
    run = tmp_path / "run"
    Trainer(cfg, run).run(keep_every=2 * per_update)
    kept = run / "checkpoints"
    assert sorted(p.name for p in kept.iterdir()) == [f"agent-{s:010d}.safetensors" for s in (0, 32, 64)]
    first, last = load_agent(kept / "agent-0000000000.safetensors"), load_agent(kept / "agent-0000000064.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), start.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(),
                                                  load_agent(run / "agent.safetensors").state_dict().values()))
    # a killed longer run kept agents past the checkpoint it is resumed from, and one cut off mid-write
    shutil.copy(kept / "agent-0000000064.safetensors", kept / "agent-0000000096.safetensors")
    (kept / "agent-0000000112.safetensors.tmp").write_bytes(b"cut off")
    Trainer(replace(cfg, imitation_steps=5 * per_update), run).run(keep_every=5 * per_update)
    assert sorted(p.name for p in kept.iterdir()) == [f"agent-{s:010d}.safetensors" for s in (0, 32, 64, 80)]
    with pytest.raises(MvalError, match="--keep-every 0: must be at least 1"):
        Trainer(cfg, tmp_path / "other").run(keep_every=0)
