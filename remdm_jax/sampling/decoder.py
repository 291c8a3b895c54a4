"""The decoder protocol: what the sampler needs from a way of decoding.

A decoder is the static part of a plan (`plan.rule`, a frozen, hashable dataclass, so a plan
always runs under its own decoder and a jitted run retraces for another). The sampler
(`remdm_jax.sampling.sampler`) checks its arguments, then hands the run to `plan.rule`; it
never asks which kind of decoder it holds. Two decoders implement the protocol:

- `remdm_jax.sampling.steps.StepRule`: the diffusion-time steps of MDLM and every ReMDM
  strategy (one scan over the strategy's step table, then the final noise removal);
- `remdm_jax.sampling.blocks.BlockRule`: semi-autoregressive block decoding (LLaDA,
  ReMDM-LLaDA, Fast-dLLM).

Adding a decoder is adding a class: subclass `Decoder`, implement `run` (and whatever checks
and sizes differ from the defaults), and give its config a `build_plan()` returning the plan
and this rule.

The random stream is shared: example `i` of a call draws only from `fold_in(key,
first_index + i)` (`example_keys`), step `j` from `fold_in(that, j)` split into three keys
(`step_keys`), position `p` from `fold_in(.., p)`; so tokens do not depend on the batch split
or the device count.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import jax


@dataclasses.dataclass(frozen=True)
class RunShape:
  """The static shape of one run (hashable: part of the compiled executable's signature).

  Attributes:
    batch_size: B. seq_len: L. mask_id: the mask id, in [0, V).
    batch_sharding: sharding of `[B, L]` arrays, or None.
    record: whether the run returns the per-step records of a `Trajectory`.
    on_step: host callback `on_step(step)` as each step starts, or None.
    extent: the decoder's static size beyond the shape (block decoding: the number of
      blocks the scan runs; 0 where a decoder has none, `Decoder.extent`).
  """

  batch_size: int
  seq_len: int
  mask_id: int
  batch_sharding: jax.sharding.Sharding | None = None
  record: bool = False
  on_step: Callable[[jax.Array], None] | None = None
  extent: int = 0


class Decoder(abc.ABC):
  """The protocol a plan's static rule implements (see the module docstring).

  `run` is the scan; the other methods have defaults for a decoder without prompts rules,
  extents or vocabulary checks.
  """

  @abc.abstractmethod
  def run(self, key: jax.Array, denoiser, plan, prompt, first_index,
          shape: RunShape) -> tuple[jax.Array, jax.Array, tuple | None]:
    """The whole run, traceable: `(tokens [B, L] int32, nonfinite [B] bool, records)`, where
    `records` is `(steps, unmasked, remasked)`, each `[n, B, L]`, when `shape.record`, else
    None. `prompt` is None or a checked `[B, L] int32` template; `key` is typed."""

  @abc.abstractmethod
  def check_plan(self, plan):
    """`plan` with its concrete scalars checked (a traced plan is data), or a `ValueError`."""

  @abc.abstractmethod
  def trajectory_length(self, plan, extent: int) -> int:
    """Steps of the scan (the trajectory's length, what `on_step` counts) at `extent`."""

  @abc.abstractmethod
  def times(self, plan, steps: int) -> jax.Array:
    """The time of each recorded step, `[steps] float32`, for the trajectory."""

  def check_call(self, denoiser, shape: RunShape) -> None:
    """Checks needing no tracing (the denoiser's declared abilities against the rule)."""

  def check_prompt(self, prompt) -> None:
    """Checks of the prompt (None, or a `[B, L]` array) before it is broadcast."""

  def check_vocab(self, vocab_size: int) -> None:
    """Checks of the rule against V, the logits' last axis (known once traced)."""

  def extent(self, prompt, shape: RunShape) -> int:
    """The static extent a call with `prompt` (None, an array or a tracer) needs."""
    del prompt, shape
    return 0
