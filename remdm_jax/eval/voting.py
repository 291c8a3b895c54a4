"""Votes over answers decoded from one run's steps or from several particles, on the host.

Temporal self-consistency voting (Wang et al. 2025, "Time Is a Feature: Exploiting Temporal
Dynamics in Diffusion Language Models", arXiv 2508.09138): a masked diffusion decode makes a
prediction of the whole answer at every step, and a correct answer often appears and is
overwritten before the last step. `TemporalVote` extracts an answer from each step's
clean-sequence estimate (`sample(..., return_trajectory=True, record_predictions=True)`,
`Trajectory.predicted`) and returns the answer with the largest summed weight, later steps
weighing more: step `j` of `n` weighs `exp(alpha * (j + 1) / n)` (`alpha = 0`: a plain
majority). It costs no model call beyond the decode's own (the output head on every row).
`majority` is the same vote over particles' answers (self-consistency).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Hashable, Sequence

from remdm_jax.validation import check_range

__all__ = ["TemporalVote", "majority"]


def _weighted_winner(answers: Sequence[Hashable | None], weights: Sequence[float]):
  """The answer with the largest total weight (None answers do not vote; among ties, the one
  whose last vote came latest); None when nothing voted."""
  totals, last = {}, {}
  for index, (answer, weight) in enumerate(zip(answers, weights)):
    if answer is not None:
      totals[answer] = totals.get(answer, 0.0) + weight
      last[answer] = index
  if not totals:
    return None
  return max(totals, key=lambda a: (totals[a], last[a]))


def majority(answers: Sequence[Hashable | None]):
  """The most frequent answer (ties: the one seen last); None answers do not vote."""
  return _weighted_winner(answers, [1.0] * len(answers))


@dataclasses.dataclass(frozen=True)
class TemporalVote:
  """Temporal self-consistency voting (see the module docstring).

  Attributes:
    alpha: >= 0, how much later steps weigh more (0: every step alike); the default 5 is
      ours, chosen before any measurement, not the paper's.
  """

  alpha: float = 5.0

  def __post_init__(self):
    check_range("alpha", self.alpha, 0.0)

  def weights(self, steps: int) -> list[float]:
    """`exp(alpha (j + 1) / n)` for the `n = steps` steps."""
    return [math.exp(self.alpha * (j + 1) / steps) for j in range(steps)]

  def __call__(self, answers: Sequence[Hashable | None]):
    """The winning answer of one example's per-step answers (oldest first; None where a step
    gave no answer); None when no step did."""
    return _weighted_winner(answers, self.weights(len(answers)))
