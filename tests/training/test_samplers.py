import math
import random
from collections import Counter

import pytest

from minbert.training.samplers import annealed_alpha, epoch_schedule, round_robin, sampled, task_probabilities

SIZES = {"sst": 8544, "para": 47206, "sts": 6040}
TASKS3 = ["sst", "para", "sts"]


def test_round_robin_epoch_is_the_smallest_task_once():
    schedule = epoch_schedule("round_robin", {t: SIZES[t] for t in TASKS3}, 32, 0, (0, 1), None)
    assert schedule[:6] == ["sst", "para", "sts"] * 2
    assert len(schedule) == 3 * math.ceil(6040 / 32)
    assert round_robin(["a", "b"], 5) == ["a", "b", "a", "b", "a"]


def test_single_task_epoch_is_one_pass():
    assert len(epoch_schedule("round_robin", {t: SIZES[t] for t in ["sst"]}, 32, 0, (0, 1), None)) == math.ceil(8544 / 32)


def test_steps_per_epoch_override():
    assert len(epoch_schedule("proportional", {t: SIZES[t] for t in TASKS3}, 32, 0, (0, 1), 90)) == 90


def test_annealed_alpha_follows_stickland_murray():
    assert annealed_alpha(0, 5) == 1.0
    assert annealed_alpha(4, 5) == pytest.approx(0.2)
    assert annealed_alpha(2, 5) == pytest.approx(0.6)


@pytest.mark.parametrize("epoch", [0, 2, 4])
def test_annealed_frequencies_follow_formula(epoch):
    alpha = annealed_alpha(epoch, 5)
    draws = sampled(TASKS3, SIZES, alpha, 60000, random.Random(7))
    freq = Counter(draws)
    for task, p in task_probabilities(SIZES, alpha).items():
        expected = SIZES[task] ** alpha / sum(n**alpha for n in SIZES.values())
        assert p == pytest.approx(expected)
        assert freq[task] / 60000 == pytest.approx(p, abs=0.01)


def test_sampler_is_seeded_and_epoch_aware():
    a = epoch_schedule("annealed", {t: SIZES[t] for t in TASKS3}, 32, 1, (1, 3), None)
    assert a == epoch_schedule("annealed", {t: SIZES[t] for t in TASKS3}, 32, 1, (1, 3), None)
    assert a != epoch_schedule("annealed", {t: SIZES[t] for t in TASKS3}, 32, 1, (2, 3), None)
