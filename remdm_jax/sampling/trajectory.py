"""What happened during sampling, step by step: `sample(..., return_trajectory=True)`.

A `Trajectory` holds the tokens after every step of the strategy's table and what each step
did (which positions it unmasked, which it remasked), so a person or a test can watch
remasking revise a sequence. Its length `n` is the number of steps of the table,
`len(build_plan(cfg)[0].table.t)`: `num_steps` for every strategy except `dfm`, whose adaptive
grid takes more, smaller steps (61 at `num_steps=16`). The final noise-removal call is
not a step: it fills the positions still masked after step `n - 1` (`tokens` vs
`steps[-1]`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class Trajectory(NamedTuple):
  """One sampling run, step by step (`n` steps, `B` examples, `L` positions)."""

  tokens: jax.Array      # [B, L] int32, the final tokens (after the final noise removal)
  steps: jax.Array       # [n, B, L] int32, the tokens after each step (mask id where masked)
  unmasked: jax.Array    # [n, B, L] bool, positions that received a token at that step
  remasked: jax.Array    # [n, B, L] bool, decoded positions turned back into masks
  t: jax.Array           # [n] float32, the time the denoiser saw at each step
  nonfinite: jax.Array   # [B] bool, examples whose logits were not finite where drawn
  predicted: jax.Array | None = None   # [n, B, L] int32, each step's clean-sequence estimate
                                       # (its tokens, the argmax where still masked), when
                                       # sampled with record_predictions=True


def render(trajectory: Trajectory, tokenizer, *, example: int = 0, every: int = 1,
           mask: str = "_") -> str:
  """A text view of one example: a line per `every`-th step with its time, the number of
  tokens unmasked (+) and remasked (-) and the sequence (`mask` for masked positions), then
  the final tokens.

  Args:
    trajectory: from `sample(..., return_trajectory=True)`.
    tokenizer: anything with `decode(ids) -> str` and `mask_id`.
    example: which row of the batch.
    every: show every `every`-th step (the last step is always shown).

  Raises:
    ValueError: `example` outside the batch or `every < 1`.
  """
  steps = np.asarray(trajectory.steps)
  if not 0 <= example < steps.shape[1]:
    raise ValueError(f"example must be in [0, {steps.shape[1]}), got {example}")
  if every < 1:
    raise ValueError(f"every must be >= 1, got {every}")
  unmasked = np.asarray(trajectory.unmasked)[:, example].sum(axis=-1)
  remasked = np.asarray(trajectory.remasked)[:, example].sum(axis=-1)
  times = np.asarray(trajectory.t)
  text = lambda ids: "".join(mask if i == tokenizer.mask_id else tokenizer.decode([i])
                             for i in ids)
  lines = []
  for i in range(len(steps)):
    if i % every == 0 or i == len(steps) - 1:
      lines.append(f"step {i:4d}  t={times[i]:.4f}  +{unmasked[i]:<3d} -{remasked[i]:<3d} "
                   f"|{text(steps[i, example])}|")
  lines.append(f"final{'':20s}|{text(np.asarray(trajectory.tokens)[example])}|")
  return "\n".join(lines)
