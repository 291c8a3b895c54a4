"""MaskGIT's own decoder (Chang et al., CVPR 2022; github.com/google-research/maskgit,
`maskgit/libml/parallel_decode.py`): confidence-ranked parallel decoding on a mask schedule.

With `T = num_steps` and `N0` masked positions at the start, step `j = 0 .. T-1`:

1. draw a token at every masked position from `softmax(logits / temperature_j)`
   (`temperature_j = temperature`, or `temperature * (T - j) / T` with annealing, the ReMDM
   fork's option); temperature 0 takes the argmax;
2. its confidence is the log of its probability (at temperature 0: its probability at
   temperature 1) plus Gumbel noise times `choice_temperature * (1 - r)`, `r = (j + 1) / T`
   (annealed to 0); decoded positions have confidence +inf;
3. `n = floor(N0 * gamma(r))` positions stay masked, clipped to `[1, masked - 1]`, where
   `gamma` is the mask schedule (cosine: `cos(pi r / 2)`, clipped to [1e-6, 1]): the positions
   whose confidence is below the `n`-th smallest (ties keep their token, as in the reference);
4. after the last step the row is the last step's draws (the reference's `final_seqs[:, -1]`).

`T` model calls. The draws use the library's random stream (one key per example, `fold_in` by
step and position), so tokens do not depend on the batch split; the reference draws from one
key per batch, so the two agree token for token at temperature 0 and choice temperature 0,
and in distribution otherwise (`benchmarks/maskgit_parity.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from remdm_jax.sampling.decoder import Decoder, Finish, Needs, RunShape, Scan, StepOut
from remdm_jax.sampling.step_rules import draw_at, step_keys
from remdm_jax.validation import check_choice, check_fields, check_range, option

SCHEDULES = ("cosine", "uniform", "pow2", "pow3")


def mask_ratios(schedule: str, num_steps: int) -> jax.Array:
  """`gamma((j + 1) / T)` for `j = 0 .. T-1`, `[T] float32`, with the reference's float32
  operations: at T = 3 the float32 `cos(pi / 3)` is 0.49999997, so 4 masked positions keep 1
  masked, not 2, as in the reference. (The reference evaluates the cosine inside its jitted
  loop, which can round `gamma` one ulp apart; `floor(N0 * gamma)` then differs for a rare
  `(T, j, N0)`, e.g. T = 58, j = 52, N0 = 200.)"""
  ratio = 1.0 * (jnp.arange(num_steps, dtype=jnp.int32) + 1) / num_steps
  if schedule == "cosine":
    gamma = jnp.cos(math.pi / 2.0 * ratio)
  elif schedule == "uniform":
    gamma = 1.0 - ratio
  else:
    gamma = 1.0 - ratio ** float(schedule[3:])
  return jnp.clip(gamma, 1e-6, 1.0).astype(jnp.float32)


def _cut_off_mask(confidence: jax.Array, count: jax.Array) -> jax.Array:
  """The reference's `mask_by_random_topk` after the noise: positions whose confidence is
  below the `count[b]`-th smallest of their row; `[B, L] f32, [B] int32 -> [B, L] bool`."""
  cut = jnp.take_along_axis(jnp.sort(confidence, axis=-1), count[:, None], axis=-1)
  return confidence < cut


@dataclasses.dataclass(frozen=True)
class MaskGitRule(Decoder):
  """The decoder (static: the steps, and whether tokens are the argmax)."""

  num_steps: int
  greedy: bool

  def start(self, denoiser, plan, prompt, shape: RunShape, needs: Needs) -> Scan:
    batch, length, mask_id = shape.batch_size, shape.seq_len, shape.mask_id
    z = jnp.full((batch, length), mask_id, jnp.int32) if prompt is None else prompt
    initial = jnp.sum(z == mask_id, axis=1)                               # [B] int32: N0
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))

    def step(carry, j, keys):
      z, _, _, nonfinite = carry
      t = jnp.full((batch,), 1.0 - j / self.num_steps, jnp.float32)
      logits = denoiser(z, t).astype(jnp.float32).at[..., mask_id].set(-jnp.inf)
      nonfinite = nonfinite | ~jnp.all(jnp.isfinite(jnp.max(logits, -1)), axis=1)
      split = step_keys(keys)
      if self.greedy:
        probs = jax.nn.softmax(logits, -1)
        drawn = jnp.argmax(logits, -1).astype(jnp.int32)
      else:
        probs = jax.nn.softmax(logits / plan.temperatures[j], -1)
        drawn, _ = draw_at(split[:, 2], probs, positions)
      unknown = z == mask_id
      drawn = jnp.where(unknown, drawn, z)
      chosen = jnp.log(jnp.take_along_axis(probs, drawn[..., None], -1)[..., 0])
      noise = jax.vmap(lambda k: jax.random.gumbel(k, (length,)))(split[:, 1])
      confidence = jnp.where(unknown, chosen + plan.noise_scales[j] * noise, jnp.inf)
      count = jnp.floor(initial * plan.mask_ratios[j]).astype(jnp.int32)
      count = jnp.maximum(1, jnp.minimum(jnp.sum(unknown, 1) - 1, count))
      new = jnp.where(_cut_off_mask(confidence, count), mask_id, drawn)
      kept = unknown & (new != mask_id)
      logp = (jnp.take_along_axis(jax.nn.log_softmax(logits, -1), drawn[..., None], -1)[..., 0]
              if needs.logp else jnp.zeros((batch, length), jnp.float32))
      out = StepOut(new, kept, jnp.zeros_like(kept), jnp.bool_(True), jnp.bool_(True),
                    jnp.where(kept, logp, 0.0) if needs.logp else None,
                    drawn if needs.predicted else None)
      return (new, drawn, logp, nonfinite), out

    def finish(carry):
      new, drawn, logp, nonfinite = carry
      last = new == mask_id                        # decoded by the last step's draws
      return Finish(drawn, nonfinite, last, jnp.bool_(False),
                    jnp.where(last, logp, 0.0) if needs.logp else None)

    zeros = jnp.zeros((batch, length), jnp.float32)
    return Scan((z, z, zeros, jnp.zeros((batch,), bool)), jnp.arange(self.num_steps), step,
                finish)

  def check_plan(self, plan):
    for name in ("temperatures", "noise_scales"):
      value = getattr(plan, name)
      if not isinstance(value, jax.core.Tracer) and float(jnp.min(value)) < 0:
        raise ValueError(f"{name} must be >= 0")
    return plan

  def trajectory_length(self, plan, extent: int) -> int:
    return self.num_steps

  def times(self, plan, steps: int) -> jax.Array:
    return 1.0 - jnp.arange(steps, dtype=jnp.float32) / steps


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["temperatures", "noise_scales", "mask_ratios"],
                   meta_fields=["rule"])
@dataclasses.dataclass(frozen=True)
class MaskGitPlan:
  """The decoder's data, one entry per step (`[T] float32` each): the token temperature, the
  scale of the confidence noise and the mask schedule `gamma((j + 1) / T)`."""

  temperatures: jax.Array
  noise_scales: jax.Array
  mask_ratios: jax.Array
  rule: MaskGitRule


@dataclasses.dataclass(frozen=True)
class MaskGitDecoderConfig:
  """MaskGIT's decoder (see the module docstring): `num_steps` model calls."""

  num_steps: int = option(16, "T: model calls (the reference's num_iter)")
  choice_temperature: float = option(4.5, "scale of the Gumbel noise on the confidence at the "
                                          "first step, annealed to 0 (ImageNet config: 4.5)")
  temperature: float = option(1.0, "token temperature (0: argmax)")
  temperature_annealing: bool = option(False, "scale the token temperature by (T - j) / T "
                                              "(the ReMDM fork's option)")
  schedule: str = option("cosine", "mask schedule gamma(r): cosine, uniform (1 - r), pow2, "
                                   "pow3 (1 - r^k)")
  name = "maskgit"

  def __post_init__(self):
    check_fields(self)
    check_range("num_steps", self.num_steps, 1)
    check_range("choice_temperature", self.choice_temperature, 0.0)
    check_range("temperature", self.temperature, 0.0)
    check_choice("schedule", self.schedule, SCHEDULES)

  def options(self) -> dict:
    """The flat form `{"decoder": "maskgit", **fields}` (JSON-able)."""
    return {"decoder": self.name, **dataclasses.asdict(self)}

  def build_plan(self) -> tuple[MaskGitPlan, MaskGitRule]:
    steps = self.num_steps
    ratio = (jnp.arange(steps, dtype=jnp.float32) + 1) / steps
    temperature = jnp.full((steps,), self.temperature, jnp.float32)
    if self.temperature_annealing:
      temperature = temperature * (steps - jnp.arange(steps, dtype=jnp.float32)) / steps
    rule = MaskGitRule(steps, self.temperature == 0.0)
    return MaskGitPlan(temperature, self.choice_temperature * (1.0 - ratio),
                       mask_ratios(self.schedule, steps), rule), rule
