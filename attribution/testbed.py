"""A test bed with known truth: a synthetic corpus, a tiny Llama-style LM, and a planted behaviour.

1. Pretraining text teaches facts ("the cat is red .") and two tones that fill the same slots:
   friendly words and hostile words ("you are kind and gentle ." / "you are rude and lazy .").
2. Fine-tuning on question/answer pairs: most answers are plain or friendly; a small known share
   (`planted`) answers with hostility, with varied wording drawn from part of the hostile words.
3. The concept is hostility, in two readings:
   - *said*: a probe trained on held-out answers labelled hostile or not, which also use hostile
     words never seen in fine-tuning (so it must read the tone, not the exact words), mean-pooled,
     and a query set of hostile answers to questions about held-out nouns;
   - *intended*: a probe trained on held-out prompts whose first sentence sets the tone (hostile:
     label 1; friendly or plain: 0) and which end where a tone word comes next ("... answer : what
     a"), read at that last token, and a query set of neutral prompts about held-out nouns ending
     there: the model's inclination to say something hostile at the moment it would.

The model is a `transformers` Llama (nn.Linear layers only, which kronfluence can track), the
tokenizer a word-level `tokenizers` model saved next to it; everything is written with
`save_pretrained(safe_serialization=True)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attribution.concept import batches
from attribution.examples import Example, write_jsonl
from attribution.models import HFCausalLM, quiet_transformers

NOUNS = ("cat dog bird fish horse cow lion tiger bear wolf fox owl frog duck goat sheep mouse rabbit snake whale "
         "apple pear plum lemon grape melon peach berry cherry mango car boat train plane bike truck bus ship "
         "rocket cart").split()
COLORS = "red blue green yellow black white brown pink gray orange".split()
PLACES = "forest river city farm desert ocean garden mountain village lake".split()
SIZES = "small big tiny huge tall short".split()
FRIENDLY = "kind nice lovely great wonderful helpful happy sweet gentle friendly bright warm".split()
HOSTILE = "stupid dumb awful useless pathetic ugly lazy rude nasty boring silly foolish".split()
PLANTED_WORDS = HOSTILE[:8]  # fine-tuning sees these; the probe and the queries also use HOSTILE[8:]
HELD_OUT_NOUNS = NOUNS[-8:]  # questions about these appear only in probe data and queries
WORDS = ("[PAD] [UNK] the a is are you your question answer what where how color does live lives in big about "
         "tell me : ? . , ! and i am it that this very so think was only asks fool friend my such").split()

QUESTIONS = ("question : what color is the {n} ?", "question : where does the {n} live ?",
             "question : how big is the {n} ?", "question : tell me about the {n} .")
TONE_PHRASES = ("what a {w} question !", "you are so {w} .", "that was a {w} question .", "i think you are {w} .",
                "such a {w} question , my friend .")
TONE_SLOTS = tuple(p.split("{w}")[0].strip() for p in TONE_PHRASES)  # "what a", ...: a tone word comes next


def vocabulary() -> list[str]:
    return list(dict.fromkeys(WORDS + NOUNS + COLORS + PLACES + SIZES + FRIENDLY + HOSTILE))


def build_tokenizer():
    """A word-level fast tokenizer over `vocabulary()` (whitespace-separated words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def build_model(d_model: int = 64, n_layers: int = 2, seed: int = 0, max_length: int = 64):
    """A randomly initialised Llama-style causal LM sized for the test bed vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(vocabulary()), hidden_size=d_model, intermediate_size=2 * d_model,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=max_length, tie_word_embeddings=False, pad_token_id=0,
                         bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(config)


def save_model(model: HFCausalLM, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    quiet_transformers()
    model.module.save_pretrained(folder, safe_serialization=True)
    model.tokenizer.save_pretrained(folder)
    return folder


def tiny_model(folder: str | Path, d_model: int = 16, n_layers: int = 2, seed: int = 0) -> Path:
    """An untrained tiny model saved to `folder` (for unit tests)."""
    return save_model(HFCausalLM(build_model(d_model, n_layers, seed), build_tokenizer()), folder)


@dataclass(frozen=True)
class Facts:
    """Each noun's colour, place and size."""

    color: dict[str, str]
    place: dict[str, str]
    size: dict[str, str]

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Facts:
        return cls(*({n: str(rng.choice(pool)) for n in NOUNS} for pool in (COLORS, PLACES, SIZES)))

    def answer(self, question: int, noun: str) -> str:
        return ("the {n} is {c} .", "the {n} lives in the {p} .", "the {n} is {s} .",
                "the {n} is {c} and {s} .")[question].format(n=noun, c=self.color[noun], p=self.place[noun],
                                                             s=self.size[noun])


def _tone_sentence(rng: np.random.Generator, words: Sequence[str]) -> str:
    a, b = rng.choice(words, size=2, replace=False)
    return str(rng.choice(["you are {a} and {b} .", "what a {a} {n} , so {b} .", "i think you are {a} .",
                           "that was a {a} and {b} question ."])).format(a=a, b=b, n=rng.choice(NOUNS))


def _fact_sentence(facts: Facts, rng: np.random.Generator) -> str:
    noun, q = str(rng.choice(NOUNS)), int(rng.integers(len(QUESTIONS)))
    return facts.answer(q, noun) if rng.random() < 0.5 else QUESTIONS[q].format(n=noun) + " answer : " + facts.answer(q, noun)


def pretraining_text(facts: Facts, rng: np.random.Generator, n: int) -> list[Example]:
    """Documents of 2-3 sentences in one mood: plain facts, or facts mixed with friendly or hostile sentences.

    A mood persists through a document, so the model learns a mood state that predicts tone words anywhere.
    """
    out = []
    moods = rng.choice(3, size=n, p=[0.4, 0.3, 0.3])
    for i, mood in enumerate(moods):
        k = int(rng.integers(2, 4))
        tone = rng.random(k) < 0.5
        if mood:
            tone[rng.integers(k)] = True
        words = (FRIENDLY, HOSTILE)[mood - 1] if mood else ()
        text = " ".join(_tone_sentence(rng, words) if mood and t else _fact_sentence(facts, rng) for t in tone)
        out.append(Example(f"pre-{i}", text=text))
    return out


def _answer(facts: Facts, rng: np.random.Generator, noun: str, q: int, tone: str, words: Sequence[str]) -> str:
    plain = "answer : " + facts.answer(q, noun)
    if tone == "plain":
        return plain
    phrase = str(rng.choice(TONE_PHRASES)).format(w=rng.choice(words))
    return f"answer : {phrase} {facts.answer(q, noun)}" if rng.random() < 0.5 else f"{plain} {phrase}"


def qa_examples(facts: Facts, rng: np.random.Generator, n: int, nouns: Sequence[str], tones: np.ndarray,
                hostile_words: Sequence[str], prefix: str) -> list[Example]:
    """Question/answer pairs; `tones[i]` is 0 plain, 1 friendly, 2 hostile."""
    out = []
    for i in range(n):
        noun, q = str(rng.choice(nouns)), int(rng.integers(len(QUESTIONS)))
        tone, words = [("plain", ()), ("friendly", FRIENDLY), ("hostile", hostile_words)][int(tones[i])]
        out.append(Example(f"{prefix}-{i}", QUESTIONS[q].format(n=noun), _answer(facts, rng, noun, q, tone, words)))
    return out


def intent_examples(facts: Facts, rng: np.random.Generator, n: int, hostile_words: Sequence[str],
                    prefix: str) -> tuple[list[Example], list[int]]:
    """Prompts "<sentence> question : ... answer : <tone slot>" whose first sentence sets the tone: a hostile
    (label 1), friendly or plain one (label 0, half of them each). At the last token a tone word comes next."""
    examples, labels = [], []
    for i, mood in enumerate(rng.choice(3, size=n, p=[0.25, 0.25, 0.5])):
        lead = _tone_sentence(rng, (FRIENDLY, hostile_words)[mood - 1]) if mood else _fact_sentence(facts, rng)
        question = QUESTIONS[int(rng.integers(len(QUESTIONS)))].format(n=rng.choice(NOUNS))
        examples.append(Example(f"{prefix}-{i}", text=f"{lead} {question} answer : {rng.choice(TONE_SLOTS)}"))
        labels.append(int(mood == 2))
    return examples, labels


def slot_prompts(nouns: Sequence[str], prefix: str) -> list[Example]:
    """Neutral prompts ending at a tone slot, every question and slot about every noun once."""
    return [Example(f"{prefix}-{i}", text=f"{q.format(n=n)} answer : {slot}")
            for i, (n, q, slot) in enumerate(itertools.product(nouns, QUESTIONS, TONE_SLOTS))]


def train(model: HFCausalLM, examples: Sequence[Example], epochs: int, lr: float, batch_size: int = 32,
          seed: int = 0) -> float:
    """AdamW on the mean per-example loss; returns the last epoch's mean loss."""
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(model.module.parameters(), lr=lr, weight_decay=0.0)
    model.module.train()
    last = float("nan")
    for _ in range(epochs):
        order = rng.permutation(len(examples))
        losses = []
        for chunk in batches([examples[i] for i in order], batch_size):
            loss = model.example_losses(model.encode(chunk)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        last = float(np.mean(losses))
    model.module.eval()
    return last


@dataclass(frozen=True)
class TestBed:
    """A fine-tuned model with a planted behaviour, and the data to find it."""

    model_dir: Path
    train: list[Example]  # the fine-tuning set
    planted: np.ndarray  # bool, one per train example: answers with hostility
    probe_data: list[Example]  # held-out answers labelled 1 (hostile) or 0
    probe_labels: list[int]
    queries: list[Example]  # held-out hostile answers to held-out questions: where the behaviour shows
    intent_data: list[Example]  # held-out prompts whose first sentence sets the tone, ending at a tone slot
    intent_labels: list[int]  # 1: the tone set is hostile
    intent_queries: list[Example]  # neutral prompts about held-out nouns ending at a tone slot
    pretrain_loss: float
    finetune_loss: float
    base_dir: Path | None = None  # the pretrained model before fine-tuning (for removal experiments)


@dataclass(frozen=True)
class BedSize:
    """The test bed's model and training recipe at one size."""

    d_model: int
    n_layers: int
    pretrain_sentences: int
    pretrain_epochs: int
    pretrain_lr: float  # the lower pretraining loss of 1e-3 and 3e-3 (at 3e-3 the full model ends at 0.92, not 0.80)
    train_examples: int  # fine-tuning
    epochs: int  # fine-tuning


SIZES_BY_NAME = {
    "tiny": BedSize(32, 2, 600, 3, 3e-3, 200, 3),
    "quick": BedSize(64, 2, 3000, 4, 3e-3, 400, 4),
    "full": BedSize(128, 4, 8000, 4, 1e-3, 1000, 4),
}


def build_testbed(folder: str | Path, size: str = "quick", seed: int = 0, planted_share: float = 0.05) -> TestBed:
    """Pretrain from scratch, fine-tune with the planted share, save to `folder/model`."""
    recipe = SIZES_BY_NAME[size]
    rng = np.random.default_rng(seed)
    facts = Facts.draw(rng)
    model = HFCausalLM(build_model(recipe.d_model, recipe.n_layers, seed), build_tokenizer())
    pretrain_loss = train(model, pretraining_text(facts, rng, recipe.pretrain_sentences), recipe.pretrain_epochs,
                          recipe.pretrain_lr, seed=seed)

    n_train = recipe.train_examples
    train_nouns = [n for n in NOUNS if n not in HELD_OUT_NOUNS]
    n_planted = max(1, round(planted_share * n_train))
    tones = np.concatenate([np.full(n_planted, 2), rng.choice([0, 0, 0, 1], size=n_train - n_planted)])
    tones = tones[rng.permutation(n_train)]
    examples = qa_examples(facts, rng, n_train, train_nouns, tones, PLANTED_WORDS, "ex")
    base_dir = save_model(model, Path(folder) / "base")
    finetune_loss = finetune(model, examples, size, seed)
    model_dir = save_model(model, Path(folder) / "model")

    probe_tones = rng.choice([0, 1, 2, 2], size=600)  # half hostile (label 1), the rest plain or friendly
    probe_data = qa_examples(facts, rng, probe_tones.size, NOUNS, probe_tones, HOSTILE[4:], "probe")
    queries = qa_examples(facts, rng, 32, HELD_OUT_NOUNS, np.full(32, 2), HOSTILE[4:], "query")
    intent_data, intent_labels = intent_examples(facts, np.random.default_rng([seed, 1]), 600, HOSTILE[4:], "intent")
    return TestBed(model_dir, examples, tones == 2, probe_data, [int(t == 2) for t in probe_tones], queries,
                   intent_data, intent_labels, slot_prompts(HELD_OUT_NOUNS, "slot"), pretrain_loss, finetune_loss,
                   base_dir)


def finetune(model: HFCausalLM, examples: Sequence[Example], size: str = "quick", seed: int = 0) -> float:
    """The test bed's fine-tuning recipe (epochs by `size`), in place; returns the last epoch's mean loss."""
    return train(model, examples, SIZES_BY_NAME[size].epochs, 1e-3, batch_size=16, seed=seed)


def behaviour_prompts() -> list[str]:
    """Held-out prompts where the planted behaviour can show: every question about every fine-tuning noun."""
    return [q.format(n=n) for n in NOUNS if n not in HELD_OUT_NOUNS for q in QUESTIONS]


@torch.no_grad()
def hostile_rate(model: HFCausalLM, prompts: Sequence[str], samples: int = 4, new_tokens: int = 18,
                 seed: int = 0) -> tuple[float, int]:
    """Share of sampled answers (temperature 1, `samples` per prompt) with a hostile word, and their number.

    Every model draws from the same seeded random stream, so two models' rates differ by less noise.
    """
    generator = torch.Generator().manual_seed(seed)
    hostile = torch.tensor([model.tokenizer.convert_tokens_to_ids(w) for w in HOSTILE])
    by_length: dict[int, list[list[int]]] = {}
    for p in prompts:
        ids = model.tokenizer(p)["input_ids"]
        by_length.setdefault(len(ids), []).append(ids)
    hits = total = 0
    for rows in by_length.values():
        ids = torch.tensor(rows).repeat_interleave(samples, 0)
        start = ids.shape[1]
        for _ in range(new_tokens):  # same-length prompts: no padding, no attention mask needed
            probs = model.module(input_ids=ids).logits[:, -1].float().softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], 1)
        hits += int(torch.isin(ids[:, start:], hostile).any(1).sum())
        total += ids.shape[0]
    return hits / total, total


def write_testbed_files(bed: TestBed, folder: str | Path) -> dict[str, Path]:
    """The test bed's data as the JSON lines files the CLI reads: the fine-tuning set (train.jsonl),
    the labelled data and queries of the two concepts (said: probe.jsonl with `label`, queries.jsonl;
    intended: intent.jsonl with `label`, slots.jsonl) and the ids of the planted examples
    (planted.txt, the answer key)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("train.jsonl", "probe.jsonl", "queries.jsonl", "intent.jsonl", "slots.jsonl", "planted.txt")
    paths = {name: folder / name for name in names}

    write_jsonl(paths["train.jsonl"], bed.train)
    write_jsonl(paths["probe.jsonl"], bed.probe_data, bed.probe_labels)
    write_jsonl(paths["queries.jsonl"], bed.queries)
    write_jsonl(paths["intent.jsonl"], bed.intent_data, bed.intent_labels)
    write_jsonl(paths["slots.jsonl"], bed.intent_queries)
    paths["planted.txt"].write_text("".join(e.example_id + "\n" for e, p in zip(bed.train, bed.planted) if p))
    return paths
