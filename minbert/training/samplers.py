"""Which task each training step draws from. Tiny, seeded, epoch-aware; every DDP rank calls
them with the same arguments and so draws the same task at each step.

Definition of an epoch (steps = batches):
- round_robin: rounds of one batch of each task, in order; by default as many rounds as the
  smallest task has batches, so an epoch passes once over the smallest training set and sees
  the same number of examples of every task (the larger sets continue where they stopped);
- proportional: each step draws task i with probability N_i / sum N (Sanh et al. 2019);
- annealed: probability proportional to N_i^alpha, alpha = 1 - 0.8 (e - 1) / (E - 1) for epoch
  e of E (Stickland and Murray 2019), so sampling moves from proportional to near-uniform;
- both samplers take, by default, as many steps per epoch as round-robin would.
A phase with a single task passes over that task once per epoch.
"""

from __future__ import annotations

import math
import random


def default_steps(tasks: list[str], batches: dict[str, int]) -> int:
    if len(tasks) == 1:
        return batches[tasks[0]]
    return len(tasks) * min(batches[t] for t in tasks)


def round_robin(tasks: list[str], steps: int) -> list[str]:
    return [tasks[i % len(tasks)] for i in range(steps)]


def annealed_alpha(epoch: int, epochs: int) -> float:
    """Stickland and Murray (2019): alpha = 1 - 0.8 (e - 1) / (E - 1), e = 1..E (0-based epoch here)."""
    return 1.0 if epochs <= 1 else 1.0 - 0.8 * epoch / (epochs - 1)


def task_probabilities(sizes: dict[str, int], alpha: float) -> dict[str, float]:
    weights = {t: n**alpha for t, n in sizes.items()}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def sampled(tasks: list[str], sizes: dict[str, int], alpha: float, steps: int, rng: random.Random) -> list[str]:
    probs = task_probabilities({t: sizes[t] for t in tasks}, alpha)
    return rng.choices(tasks, weights=[probs[t] for t in tasks], k=steps)


def epoch_schedule(sampler: str, sizes: dict[str, int], batch_size: int, seed: int, epoch: tuple[int, int] = (0, 1),
                   steps: int | None = None) -> list[str]:  # fmt: skip
    """The task of every step of one epoch of a phase: `sizes` maps the phase's tasks, in order, to
    their training examples; `epoch` is (this epoch's index, the phase's epochs); `steps` the
    phase's steps_per_epoch (None: as many as round-robin takes)."""
    tasks = list(sizes)
    batches = {t: math.ceil(sizes[t] / batch_size) for t in tasks}
    steps = steps or default_steps(tasks, batches)
    if sampler == "round_robin":
        return round_robin(tasks, steps)
    rng = random.Random(f"{seed}/sampler/{epoch[0]}")
    alpha = 1.0 if sampler == "proportional" else annealed_alpha(*epoch)
    return sampled(tasks, sizes, alpha, steps, rng)
