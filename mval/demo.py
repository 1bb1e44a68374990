"""The built-in example: a small contextual bandit log with a known logger and a target policy.

20 contexts with 3 features, 5 actions, expected reward m(x, a) = sigmoid(theta_a . x). The logger
pi0 is a noisy softmax that favours the wrong actions (with a 5% uniform floor, so every action
has some probability); the target pi is a softmax of the true score, so it puts much of its mass
where pi0 rarely looks: the case MVAL is for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy.special import softmax

from mval.policies import load_policy, policy_frame
from mval.store import open_store

N_CONTEXTS, N_ACTIONS, N_FEATURES = 20, 5, 3


@dataclass(frozen=True)
class ExampleProblem:
    context_ids: np.ndarray  # (C,)
    features: np.ndarray  # (C, F)
    mean_reward: np.ndarray  # (C, K): m(x, a)
    logger: np.ndarray  # (C, K): pi0
    target: np.ndarray  # (C, K): pi

    @property
    def true_value(self) -> float:
        """V(pi) = mean over (uniform) contexts of sum_a pi(a|x) m(x, a)."""
        return float((self.target * self.mean_reward).sum(axis=1).mean())


def example_problem(seed: int = 0) -> ExampleProblem:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_CONTEXTS, N_FEATURES))
    score = x @ rng.normal(size=(N_ACTIONS, N_FEATURES)).T
    pi0 = 0.95 * softmax(-0.5 * score + rng.normal(size=score.shape), axis=1) + 0.05 / N_ACTIONS
    return ExampleProblem(
        context_ids=np.array([f"c{i:02d}" for i in range(N_CONTEXTS)]),
        features=x,
        mean_reward=1 / (1 + np.exp(-score)),
        logger=pi0,
        target=softmax(score, axis=1),
    )


def sample_log(problem: ExampleProblem, policy: np.ndarray, rows: int, rng: np.random.Generator) -> pl.DataFrame:
    """`rows` rounds logged with `policy` (contexts x actions) on the example's true click rates."""
    ctx = rng.integers(N_CONTEXTS, size=rows)
    cdf = np.cumsum(policy[ctx], axis=1)
    action = np.minimum((rng.random(rows)[:, None] > cdf).sum(axis=1), N_ACTIONS - 1)
    reward = (rng.random(rows) < problem.mean_reward[ctx, action]).astype(float)
    return pl.DataFrame({
        "context_id": problem.context_ids[ctx],
        "features": problem.features[ctx].tolist(),
        "action": action,
        "propensity": policy[ctx, action],
        "reward": reward,
    })


def write_example(folder: str | Path, rows: int = 5000, seed: int = 0) -> dict[str, Path]:
    """Write example_log.parquet (logged by pi0), logger_policy.csv and target_policy.csv."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    problem = example_problem(seed)
    paths = {
        "log": folder / "example_log.parquet",
        "logger_policy": folder / "logger_policy.csv",
        "target_policy": folder / "target_policy.csv",
    }
    sample_log(problem, problem.logger, rows, np.random.default_rng(seed + 1)).write_parquet(paths["log"])
    policy_frame(problem.context_ids, problem.logger).write_csv(paths["logger_policy"])
    policy_frame(problem.context_ids, problem.target).write_csv(paths["target_policy"])
    return paths


def write_logged_rounds(store: str | Path, policy: str, path: str | Path, rows: int = 1000, seed: int = 7) -> Path:
    """`rows` new rounds logged with the store's policy `policy` on the example problem (as Parquet)."""
    problem = example_problem()
    with open_store(store, read_only=True) as con:
        probs = load_policy(con, policy, n_actions=N_ACTIONS).probs_for(problem.context_ids)
    sample_log(problem, probs, rows, np.random.default_rng(seed)).write_parquet(path)
    return Path(path)


@dataclass(frozen=True)
class DemoStep:
    """One command of the walkthrough, with a comment printed before it."""

    comment: str
    args: list[str]
    prepare: Callable[[], object] | None = None  # run before the command (writes the file it reads)


def bandit_steps(folder: Path) -> list[DemoStep]:
    """Store, ingest, query, policies, off-policy evaluation, the MVAL design, and the rounds logged with it."""
    paths = write_example(folder)
    store = str(folder / "demo.duckdb")
    next_log = folder / "next_log.parquet"
    return [
        DemoStep("a store, and the example log (5,000 rows, 20 contexts, 5 actions, logged by pi0)",
                 ["init", store]),
        DemoStep("", ["ingest", store, str(paths["log"]), "--logger", "pi0"]),
        DemoStep("", ["query", store, "SELECT * FROM logger_summary"]),
        DemoStep("the logger's policy (named like the logger) and a target policy to evaluate",
                 ["policy", "add", store, "pi0", str(paths["logger_policy"])]),
        DemoStep("", ["policy", "add", store, "target", str(paths["target_policy"])]),
        DemoStep(f"what would the target earn? (true value {example_problem().true_value:.4f})",
                 ["evaluate", store, "--policy", "target", "--estimator", "ips,snips,dr,balanced-ips"]),
        DemoStep("which logging policy for the next 1,000 rounds evaluates it best together with the old log?",
                 ["design", store, "--target", "target", "--budget", "1000", "--save-as", "mval-next"]),
        DemoStep("", ["query", store, "SELECT context_id, action, round(prob, 3) AS prob FROM policies "
                      "WHERE policy = 'mval-next' AND context_id = 'c00' ORDER BY action"]),
        DemoStep("the next 1,000 rounds, logged with mval-next (simulated here from the example's true click "
                 "rates), join the log as a second logger",
                 ["ingest", store, str(next_log), "--logger", "mval-next"],
                 prepare=lambda: write_logged_rounds(store, "mval-next", next_log)),
        DemoStep("the target judged from both logs: balanced estimators weight each row by the loggers' mixture",
                 ["evaluate", store, "--policy", "target", "--estimator", "balanced-ips,balanced-dr"]),
    ]


def attribution_steps(folder: Path) -> list[DemoStep]:
    """A tiny language model fine-tuned with 5% planted hostile answers: find them with a concept probe."""
    import torch

    from attribution.testbed import build_testbed, write_testbed_files

    torch.manual_seed(0)
    bed = folder / "testbed"
    files = write_testbed_files(build_testbed(bed, "tiny", seed=0), bed)
    store, model = str(folder / "demo.duckdb"), str(bed / "model")
    probe = str(bed / "hostile.safetensors")
    return [
        DemoStep(f"a tiny LM fine-tuned on {bed / 'train.jsonl'}; 10 of its 200 examples plant hostile "
                 f"answers (ids in {files['planted.txt']})", ["examples", "add", store, "finetune", str(files["train.jsonl"])]),
        DemoStep("a probe for the concept 'hostile', from labelled held-out answers",
                 ["probe", "train", "--model", model, "--layer", "0", "--data", str(files["probe.jsonl"]), "-o", probe]),
        DemoStep("which training examples carry the concept?",
                 ["score", store, "--model", model, "--dataset", "finetune", "--concept", probe, "--method", "probe"]),
        DemoStep("how many of the 10 top-scored are planted? (random picks would find 0.5)",
                 ["query", store, "SELECT count(*) FILTER (WHERE example_id IN (SELECT column0 FROM read_csv("
                  f"'{files['planted.txt']}', header = false))) AS planted_in_top_10 FROM (SELECT example_id "
                  "FROM scores WHERE method = 'probe' ORDER BY score DESC LIMIT 10)"]),
        DemoStep("the training set without the 10 top-scored examples",
                 ["curate", store, "--dataset", "finetune", "--method", "probe", "--drop-top", "10",
                  "-o", str(bed / "clean.jsonl")]),
    ]
