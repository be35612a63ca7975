"""The sampling chain on hand-made logits: each stage, seeds, penalties, and the distributions drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeinfer.engine.sampling import Sampler, SamplingError, SamplingParams

OFF = dict(top_k=0, top_p=1.0, min_p=0.0)


def probs_of(logits):
    e = np.exp(np.asarray(logits, np.float64) - np.max(logits))
    return e / e.sum()


def test_greedy_is_argmax_after_bias():
    logits = np.array([1.0, 3.0, 2.0, -1.0], np.float32)
    assert Sampler(SamplingParams(temperature=0), 4).sample(logits) == 1
    s = Sampler(SamplingParams(temperature=0, logit_bias={2: 5.0}), 4)
    assert s.sample(logits) == 2
    s = Sampler(SamplingParams(temperature=0, logit_bias={1: -math.inf}), 4)
    assert s.sample(logits) == 2


def test_top_k_top_p_min_p_candidates():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    ids, _ = Sampler(SamplingParams(temperature=1, top_k=3, top_p=1.0, min_p=0.0), 5).candidates(logits)
    assert ids.tolist() == [0, 1, 2]
    # top-p: smallest prefix whose mass reaches p: 0.5 + 0.2 = 0.7 >= 0.65 -> 2 tokens
    ids, _ = Sampler(SamplingParams(temperature=1, top_k=0, top_p=0.65, min_p=0.0), 5).candidates(logits)
    assert ids.tolist() == [0, 1]
    ids, _ = Sampler(SamplingParams(temperature=1, top_k=0, top_p=0.75, min_p=0.0), 5).candidates(logits)
    assert ids.tolist() == [0, 1, 2]
    # min-p: keep p >= 0.25 * 0.5 = 0.125
    ids, probs = Sampler(SamplingParams(temperature=1, top_k=0, top_p=1.0, min_p=0.25), 5).candidates(logits)
    assert ids.tolist() == [0, 1, 2]
    np.testing.assert_allclose(probs, np.array([0.5, 0.2, 0.15]) / 0.85)


def test_temperature_reshapes_after_filters():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    _, p1 = Sampler(SamplingParams(temperature=1.0, **OFF), 3).candidates(logits)
    _, p_hot = Sampler(SamplingParams(temperature=2.0, **OFF), 3).candidates(logits)
    np.testing.assert_allclose(p1, [0.6, 0.3, 0.1])
    np.testing.assert_allclose(p_hot, probs_of(np.log([0.6, 0.3, 0.1]) / 2))


def test_draws_follow_the_distribution():
    """Chi-square-style check: 20,000 draws at temperature 1 match the softmax within a few sigma."""
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], np.float32)
    s = Sampler(SamplingParams(temperature=1.0, seed=123, **OFF), 5)
    n = 20_000
    counts = np.bincount([s.sample(logits) for _ in range(n)], minlength=5)
    expected = probs_of(logits) * n
    sigma = np.sqrt(expected * (1 - expected / n))
    assert np.all(np.abs(counts - expected) < 5 * sigma), (counts, expected)


def test_same_seed_same_tokens_other_seed_differs():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    params = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [Sampler(SamplingParams(seed=7, **params), 1000).sample(logits) for _ in range(1)]
    s1, s2, s3 = (Sampler(SamplingParams(seed=seed, **params), 1000) for seed in (7, 7, 8))
    seq1 = [s1.sample(logits) for _ in range(50)]
    seq2 = [s2.sample(logits) for _ in range(50)]
    seq3 = [s3.sample(logits) for _ in range(50)]
    assert seq1 == seq2 and seq1 != seq3 and a[0] == seq1[0]


def test_repeat_presence_frequency_penalties():
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    s = Sampler(SamplingParams(repeat_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25), 4, history=[0, 1, 1])
    out = s.apply_penalties(logits)
    # positive logit divided, negative multiplied (llama.cpp); then count*freq + presence subtracted
    np.testing.assert_allclose(out, [2.0 / 2 - 0.25 - 0.5, -2.0 * 2 - 0.5 - 0.5, 1.0, 0.5])


def test_penalty_window_forgets_old_tokens():
    s = Sampler(SamplingParams(repeat_penalty=2.0, repeat_last_n=2), 4, history=[0, 1, 2])
    out = s.apply_penalties(np.ones(4, np.float32))
    np.testing.assert_allclose(out, [1.0, 0.5, 0.5, 1.0])
    s = Sampler(SamplingParams(repeat_penalty=2.0, repeat_last_n=0), 4, history=[0, 1])
    np.testing.assert_allclose(s.apply_penalties(np.ones(4, np.float32)), np.ones(4))


def test_greedy_with_penalty_avoids_repeat():
    logits = np.array([1.0, 0.9], np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.5), 2, history=[0])
    assert s.sample(logits) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(repeat_penalty=0), "repeat_penalty"),
        (dict(presence_penalty=3), "presence_penalty"),
        (dict(top_k=2.5), "top_k"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(seed=-1), "seed"),
        (dict(logit_bias={99: 1.0}), "logit_bias"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(SamplingError, match=message):
        Sampler(SamplingParams(**kwargs), 10)
