"""Ye et al.'s top-k decoding: every step re-predicts every answer position and remasks the
least confident, so a decoded token can change until the last step.

Ye et al., "Beyond Autoregression: Discrete Diffusion for Complex Reasoning and Planning",
ICLR 2025 (github.com/HKUNLP/diffusion-vs-ar, `topk_decoding`). With `T = num_steps`, at step
`t = T-1, ..., 0`: `x0 = argmax` of the logits at every maskable position (the prompt is
kept); its score is the log-probability of `x0` plus Gumbel noise of temperature
`gumbel_temperature * t / T`; for `t > 0` the `floor(N t / T)` lowest-scoring maskable
positions are masked again (`N` of them in the row), the rest hold `x0`; at `t = 0` the row is
`x0`. `T` model calls. One difference from the reference: the mask id is never predicted
(the reference's argmax runs over the whole vocabulary).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from remdm_jax.sampling.decoder import Decoder, Finish, Needs, RunShape, Scan, StepOut
from remdm_jax.sampling.step_rules import step_keys
from remdm_jax.validation import check_fields, check_range, option


@dataclasses.dataclass(frozen=True)
class RepredictRule(Decoder):
  """The decoder (static: the number of steps)."""

  num_steps: int

  def start(self, denoiser, plan, prompt, shape: RunShape, needs: Needs) -> Scan:
    batch, length, mask_id = shape.batch_size, shape.seq_len, shape.mask_id
    z = jnp.full((batch, length), mask_id, jnp.int32) if prompt is None else prompt
    maskable = z == mask_id                                           # [B, L] bool
    count = jnp.sum(maskable, axis=1)                                 # [B]
    steps = self.num_steps

    def step(carry, j, keys):
      z, nonfinite = carry
      t = steps - 1 - j
      logits = denoiser(z, jnp.full((batch,), (t + 1) / steps, jnp.float32))
      nonfinite = nonfinite | ~jnp.all(jnp.isfinite(logits), axis=(1, 2))
      log_probs = jax.nn.log_softmax(logits.astype(jnp.float32).at[..., mask_id].set(-jnp.inf))
      x0 = jnp.where(maskable, jnp.argmax(log_probs, -1).astype(jnp.int32), z)
      noise = jax.vmap(lambda k: jax.random.gumbel(k, (length,)))(step_keys(keys)[:, 1])
      temperature = plan.gumbel_temperature * t / steps
      score = jnp.where(maskable, jnp.max(log_probs, -1) + temperature * noise, jnp.inf)
      rank = jnp.argsort(jnp.argsort(score, axis=1), axis=1)          # 0: least confident
      remask = rank < (count * t // steps)[:, None]
      new = jnp.where(remask, mask_id, x0)
      kept = maskable & ~remask
      logp = jnp.where(kept, jnp.max(log_probs, -1), 0.0) if needs.logp else None
      return (new, nonfinite), StepOut(new, kept, remask, jnp.bool_(True), jnp.bool_(True),
                                       logp, x0 if needs.predicted else None)

    finish = lambda carry: Finish(carry[0], carry[1], jnp.zeros((batch, length), bool),
                                  jnp.bool_(False), jnp.zeros((batch, length), jnp.float32)
                                  if needs.logp else None)
    return Scan((z, jnp.zeros((batch,), bool)), jnp.arange(steps), step, finish)

  def check_plan(self, plan):
    if not isinstance(plan.gumbel_temperature, jax.core.Tracer):
      check_range("gumbel_temperature", float(plan.gumbel_temperature), 0.0)
    return plan

  def trajectory_length(self, plan, extent: int) -> int:
    return self.num_steps

  def times(self, plan, steps: int) -> jax.Array:
    return 1.0 - jnp.arange(steps, dtype=jnp.float32) / steps


@functools.partial(jax.tree_util.register_dataclass, data_fields=["gumbel_temperature"],
                   meta_fields=["rule"])
@dataclasses.dataclass(frozen=True)
class RepredictPlan:
  """The decoder's data (the Gumbel temperature, a sweep without recompiling) and rule."""

  gumbel_temperature: jax.Array     # [] float32
  rule: RepredictRule


@dataclasses.dataclass(frozen=True)
class RepredictConfig:
  """Ye et al.'s top-k decoding (see the module docstring): `num_steps` model calls."""

  num_steps: int = option(20, "T: model calls; floor(N t / T) positions stay masked after "
                              "step t")
  gumbel_temperature: float = option(0.5, "score noise at the first step, decaying to 0 "
                                          "(the reference's 0.5)")
  name = "repredict"

  def __post_init__(self):
    check_fields(self)
    check_range("num_steps", self.num_steps, 1)
    check_range("gumbel_temperature", self.gumbel_temperature, 0.0)

  def options(self) -> dict:
    """The flat form `{"decoder": "repredict", **fields}` (JSON-able)."""
    return {"decoder": self.name, **dataclasses.asdict(self)}

  def build_plan(self) -> tuple[RepredictPlan, RepredictRule]:
    rule = RepredictRule(self.num_steps)
    return RepredictPlan(jnp.float32(self.gumbel_temperature), rule), rule
