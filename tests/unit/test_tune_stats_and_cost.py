"""The statistics ``tune`` chooses with and the latency model it predicts with."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankers_plugins import ConfigError
from rerankers_plugins.eval import stats
from rerankers_plugins.eval.tune.cost import LeafCost, Overhead, fit_nonnegative, mixture_percentile, timed

ids = st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=4), min_size=2, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(ids, st.integers(0, 2**31))
def test_a_split_is_a_partition_fixed_by_the_seed(qids, seed):
    dev, test = stats.split_queries(qids, seed=seed)
    assert sorted(dev + test) == sorted(qids) and not set(dev) & set(test) and dev and test
    assert (dev, test) == stats.split_queries(
        list(reversed(qids)), seed=seed
    )  # the input order does not matter


@settings(max_examples=60, deadline=None)
@given(ids, st.integers(0, 2**31), st.integers(2, 6))
def test_folds_hold_every_query_out_exactly_once(qids, seed, k):
    if k > len(qids):
        with pytest.raises(ConfigError):
            stats.folds(qids, k=k, seed=seed)
        return
    folds = stats.folds(qids, k=k, seed=seed)
    held_out = [q for _, test in folds for q in test]
    assert sorted(held_out) == sorted(qids)
    for dev, test in folds:
        assert sorted(dev + test) == sorted(qids) and not set(dev) & set(test)
    assert folds == stats.folds(qids, k=k, seed=seed)


def test_the_bootstrap_interval_covers_the_mean_about_95_times_in_100():
    rng = random.Random(0)
    covered = 0
    for trial in range(200):
        sample = [rng.random() for _ in range(60)]  # uniform: mean 0.5
        low, high = stats.bootstrap_ci(sample, seed=trial, resamples=1000)
        covered += low <= 0.5 <= high
    assert 180 <= covered <= 198  # 0.95 +- sampling error of 200 trials


def test_paired_tests_tell_a_real_difference_from_noise():
    rng = random.Random(1)
    base = [rng.random() for _ in range(100)]
    better = [min(1.0, b + 0.05 + rng.gauss(0, 0.02)) for b in base]
    real = stats.paired_test(better, base, seed=0)
    assert real.p_value < 0.001 and real.low > 0 and 0.03 < real.difference < 0.06
    # with no difference at all, a test at 5 % is fooled about 5 times in 100
    fooled = 0
    for trial in range(200):
        noise = [b + rng.gauss(0, 0.05) for b in base]
        fooled += stats.paired_test(noise, base, seed=trial, resamples=2000).p_value < 0.05
    assert 2 <= fooled <= 20
    assert stats.paired_test(base, base).p_value == 1.0
    with pytest.raises(ConfigError, match="same queries"):
        stats.paired_test([0.1], [0.1, 0.2])


def test_a_nonnegative_fit_recovers_a_linear_cost_and_never_goes_negative():
    rows = [[1.0, n, 3.0 * n] for n in (10, 20, 30, 50, 100, 200)]
    y = [2.0 + 0.5 * n for n in (10, 20, 30, 50, 100, 200)]
    coef, err = fit_nonnegative(rows, y)
    assert err < 1e-12 and min(coef) >= 0
    assert coef[0] + coef[1] * 40 + coef[2] * 120 == pytest.approx(22.0)
    decreasing = [
        10.0 - 0.01 * n for n in (10, 20, 30, 50, 100, 200)
    ]  # cost falling with size: no such thing
    coef, _ = fit_nonnegative(rows, decreasing)
    assert min(coef) >= 0


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.integers(1, 600), min_size=1, max_size=40), st.floats(0.05, 500.0)),
        min_size=3,
        max_size=30,
    ),
    st.lists(st.integers(1, 600), min_size=1, max_size=40),
    st.integers(1, 600),
)
def test_a_leaf_cost_never_falls_with_more_or_longer_texts(samples, words, extra):
    cost = LeafCost.fit(samples)
    base = cost.predict(words)
    assert cost.predict([*words, extra]) >= base  # one more pair
    assert cost.predict([w + extra for w in words]) >= base  # longer texts
    assert base >= 0 and len(cost.ratios) == len(samples)


def test_the_overhead_model_and_the_percentile_of_a_mixture():
    samples = [(n, p, 0.1 + 0.01 * n + 0.002 * p) for n in (10, 50, 100) for p in (5, 10, 50)]
    over = Overhead.fit(samples)
    assert over.predict(100, 50) == pytest.approx(1.2, rel=1e-6)
    # every query at 10 ms, half the calls 20 % slower: the p95 is 12 ms, the p50 between
    assert mixture_percentile([10.0] * 10, [1.0, 1.2], 95) == pytest.approx(12.0)
    assert mixture_percentile([10.0] * 10, [1.0, 1.2], 25) == pytest.approx(10.0)


def test_timed_calls_with_requests_in_flight_return_one_latency_each_in_order():
    seen = []
    ms = timed([lambda i=i: seen.append(i) for i in range(6)], concurrency=3)
    assert len(ms) == 6 and all(t >= 0 for t in ms) and sorted(seen) == list(range(6))
