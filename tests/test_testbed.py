"""The test bed's concept data: tone-setting prompts that end at a tone slot, and neutral slot prompts."""

import numpy as np

from attribution.testbed import (
    FRIENDLY,
    HELD_OUT_NOUNS,
    HOSTILE,
    QUESTIONS,
    TONE_PHRASES,
    TONE_SLOTS,
    Facts,
    intent_examples,
    slot_prompts,
)


def test_tone_slots_are_the_words_before_each_tone_word():
    assert TONE_SLOTS == ("what a", "you are so", "that was a", "i think you are", "such a")
    assert all(p.startswith(s + " {w}") for p, s in zip(TONE_PHRASES, TONE_SLOTS))


def test_intent_examples_are_labelled_by_the_tone_of_their_first_sentence():
    rng = np.random.default_rng(0)
    examples, labels = intent_examples(Facts.draw(rng), rng, 300, HOSTILE[4:], "intent")
    assert len(examples) == len(labels) == 300 and len({e.example_id for e in examples}) == 300
    for e, label in zip(examples, labels):
        lead, rest = e.text.split(" question : ", 1)
        assert rest.split(" answer : ")[1] in TONE_SLOTS  # the text ends where a tone word comes next
        words = set(lead.split())
        assert label == int(bool(words & set(HOSTILE[4:])))
        assert not words & set(HOSTILE[:4])  # the hostile words given: HOSTILE[4:], half of them never in fine-tuning
        assert not (label and words & set(FRIENDLY))
    shares = np.bincount([int(bool(set(e.text.split()) & set(FRIENDLY))) + 2 * y for e, y in zip(examples, labels)],
                         minlength=3) / 300
    assert np.allclose(shares, [0.25, 0.25, 0.5], atol=0.08)  # plain, friendly, hostile leads


def test_slot_prompts_ask_every_question_about_every_noun_at_every_slot():
    prompts = slot_prompts(HELD_OUT_NOUNS, "slot")
    assert len(prompts) == len(HELD_OUT_NOUNS) * len(QUESTIONS) * len(TONE_SLOTS)
    assert len({p.text for p in prompts}) == len(prompts)
    assert prompts[0].text == "question : what color is the " + HELD_OUT_NOUNS[0] + " ? answer : what a"
    assert not any(set(p.text.split()) & set(HOSTILE + FRIENDLY) for p in prompts)
