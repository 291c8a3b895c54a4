"""The decoder protocol: what the sampler needs from a way of decoding.

A decoder is the static part of a plan (`plan.rule`, a frozen, hashable dataclass, so a plan
always runs under its own decoder and a jitted run retraces for another). The sampler
(`remdm_jax.sampling.sampler`) checks its arguments, then hands the run to `plan.rule`; it
never asks which kind of decoder it holds. Four decoders implement the protocol:

- `remdm_jax.sampling.steps.StepRule`: the diffusion-time steps of MDLM and every ReMDM
  strategy (one scan over the strategy's step table, then the final noise removal);
- `remdm_jax.sampling.blocks.BlockRule`: semi-autoregressive block decoding (LLaDA,
  ReMDM-LLaDA, Fast-dLLM);
- `remdm_jax.sampling.maskgit.MaskGitRule`: MaskGIT's confidence decoding on its mask
  schedule;
- `remdm_jax.sampling.repredict.RepredictRule`: Ye et al.'s top-k decoding, every answer
  position re-predicted at every step.

Adding a decoder is adding a class: subclass `Decoder`, implement `start` (the scan's first
carry, its inputs, its step and what follows the scan; and whatever checks and sizes differ from
the defaults), and give its config a `build_plan()` returning the plan and this rule. `run`
(the plain decode) and the particle layer (`remdm_jax.particles`, which carries several
particles per example through the same step and resamples them) are written once, over
`start`.

The random stream is shared: the sampler gives a decoder one key per row (`keys [B]`; example
`i` of a call has `fold_in(key, first_index + i)`, `example_keys`), step `j` draws from
`fold_in(that, j)` (`row_step_keys`, what `Scan.step` receives) split into three keys
(`step_keys`), position `p` from `fold_in(.., p)`;
so tokens do not depend on the batch split or the device count.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from remdm_jax.sampling.step_rules import row_step_keys


@dataclasses.dataclass(frozen=True)
class RunShape:
  """The static shape of one run (hashable: part of the compiled executable's signature).

  Attributes:
    batch_size: B. seq_len: L. mask_id: the mask id, in [0, V).
    batch_sharding: sharding of `[B, L]` arrays, or None.
    record: whether the run returns the per-step records of a `Trajectory`.
    on_step: host callback `on_step(step)` as each step starts, or None (called by the
      driver of the scan, `Decoder.run` or the particle layer, never by a decoder).
    predictions: the records also hold each step's clean-sequence estimate
      (`StepOut.predicted`, `Trajectory.predicted`).
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
  predictions: bool = False


class Needs(NamedTuple):
  """What a caller of `Decoder.start` reads from every step beyond the tokens (static; a plain
  decode needs neither, so it computes neither)."""

  logp: bool = False        # StepOut.logp: the log-probability of each committed token
  predicted: bool = False   # StepOut.predicted: the step's prediction of the clean sequence


class StepOut(NamedTuple):
  """What one step did, for the trajectory and the particle layer (`B` rows, `L` positions)."""

  z: jax.Array                   # [B, L] int32, the tokens after the step
  unmask: jax.Array              # [B, L] bool, positions that received a token
  remask: jax.Array              # [B, L] bool, decoded positions turned back into masks
  called: jax.Array              # [] bool, the model ran at this step ([] int32: its calls,
                                 # when rows take their own steps)
  boundary: jax.Array            # [] bool, the step ends a unit of the decode (a block)
  logp: jax.Array | None         # [B, L] float32, log p(token) where unmasked (0 elsewhere)
  predicted: jax.Array | None    # [B, L] int32, the step's clean-sequence estimate


class Finish(NamedTuple):
  """What follows the scan (the diffusion steps' final noise removal; nothing for a block
  decoder), in the terms of `StepOut`."""

  tokens: jax.Array              # [B, L] int32, the decoded rows
  nonfinite: jax.Array           # [B] bool, the rows' non-finite flags of the whole run
  unmask: jax.Array              # [B, L] bool, positions the finish decoded
  called: jax.Array              # [] bool, the finish called the model
  logp: jax.Array | None         # [B, L] float32, as StepOut.logp (when Needs.logp)


class Scan(NamedTuple):
  """A decode as one `lax.scan` (`Decoder.start`): `step(carry, x, keys)` is one step, `x` its
  slice of `xs`, `keys [B]` each row's key of the step (`fold_in(row key, step index)` in a
  plain decode, `step_rules.row_step_keys`; the particle layer may give a row another's).

  `carry` is a pytree whose array leaves lead with the rows (`B`, or `c * B` for `c` stacked
  copies of the batch, as classifier-free guidance stacks its rows), except scalars, which
  hold for the whole batch and stay true when rows are copied over others (`jnp.any` flags):
  the particle layer resamples a carry by gathering its rows."""

  carry: Any
  xs: Any
  step: Callable[[Any, Any, jax.Array], tuple[Any, StepOut]]   # (carry, x, keys [B])
  finish: Callable[[Any], Finish]


def announce(shape: RunShape, step) -> None:
  """Calls `shape.on_step(step)` on the host as a step starts (when there is one)."""
  if shape.on_step is not None:
    jax.debug.callback(shape.on_step, step)


def record_of(out: StepOut, shape: RunShape) -> tuple | None:
  """What a trajectory keeps of a step: `(z, unmask, remask[, predicted])`, or None."""
  if not shape.record:
    return None
  return (out.z, out.unmask, out.remask) + ((out.predicted,) if shape.predictions else ())


def check_reports(decoder, scan: Scan, needs: Needs, keys: jax.Array, who: str) -> None:
  """Raises a one-line `ValueError` when the decoder's steps (or finish) do not report what
  `needs` asks for (`StepOut.logp`, `StepOut.predicted`), naming `who` asked; traces one step
  abstractly, computes nothing."""
  if not (needs.logp or needs.predicted):
    return
  first = jax.tree.map(lambda a: a[0], scan.xs)
  out = jax.eval_shape(lambda: scan.step(scan.carry, first, row_step_keys(keys, 0))[1])
  finish = jax.eval_shape(lambda: scan.finish(scan.carry))
  missing = [name for name in ("logp", "predicted") if getattr(needs, name)
             and (getattr(out, name) is None or (name == "logp" and finish.logp is None))]
  if missing:
    raise ValueError(f"{who} needs the decoder's steps to report {' and '.join(missing)} "
                     f"(StepOut, Finish; Decoder.start's needs), and "
                     f"{type(decoder).__name__} does not")


def scan_indices(scan: Scan) -> jax.Array:
  """`[n] int32`: the index of each step of `scan` (the length of its `xs`)."""
  return jnp.arange(jax.tree.leaves(scan.xs)[0].shape[0], dtype=jnp.int32)


class Decoder(abc.ABC):
  """The protocol a plan's static rule implements (see the module docstring).

  `start` sets up the scan; `run` runs it. The other methods have defaults for a decoder
  without prompt rules, extents or vocabulary checks.
  """

  @abc.abstractmethod
  def start(self, denoiser, plan, prompt, shape: RunShape, needs: Needs) -> Scan:
    """The decode as a scan, traceable: `prompt` None or a checked `[B, L] int32` template,
    `needs` what each `StepOut` must carry. Its randomness comes only from the keys each
    step receives."""

  def run(self, keys: jax.Array, denoiser, plan, prompt,
          shape: RunShape) -> tuple[jax.Array, jax.Array, tuple | None]:
    """The whole decode of the rows whose keys are `keys [B]` (typed): `(tokens [B, L] int32,
    nonfinite [B] bool, records)`, where `records` is `(steps, unmasked, remasked)`, each
    `[n, B, L]` (and `predicted` with `shape.predictions`), when `shape.record`, else None."""
    needs = Needs(predicted=shape.predictions)
    scan = self.start(denoiser, plan, prompt, shape, needs)
    check_reports(self, scan, needs, keys, "record_predictions")

    def body(carry, indexed):
      index, x = indexed
      announce(shape, index)
      carry, out = scan.step(carry, x, row_step_keys(keys, index))
      return carry, record_of(out, shape)

    carry, records = jax.lax.scan(body, scan.carry, (scan_indices(scan), scan.xs))
    finish = scan.finish(carry)
    return finish.tokens, finish.nonfinite, records

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
