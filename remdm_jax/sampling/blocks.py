"""Semi-autoregressive block decoding: LLaDA's decoder, ReMDM-LLaDA's remasking steps and
Fast-dLLM's threshold decoding and key-value caches, as one `lax.scan` over a flat step table.

Each example's answer is the masked tail of its row, from its prompt's end (`P_b`, the
position after its last non-mask id) to `L`, cut into blocks of `K = block_length`. Block `j`
of example `b` covers `[P_b + jK, P_b + (j + 1)K)`; all examples take block `j`'s steps
together, so one call of the model serves the batch. A step reads the logits of the block's
`K` rows only (a split denoiser projects only those rows), picks `x0` per row (argmax at
temperature 0, else the 64-bit-safe Gumbel draw of the tempered SUBS distribution), scores
each row (the softmax probability of `x0`, or a uniform draw for `remasking="random"`) and
unmasks the highest-scoring masked rows:

- the step's count: `masked // S` plus one in the first `masked % S` of the block's `S =
  num_steps` regular steps (`masked` counted at the block's start), as LLaDA's
  `get_num_transfer_tokens`; with `threshold > 0`, at least every row scoring `>= threshold`;
- ReMDM-LLaDA: after `remdm_start` regular steps, `remdm_steps` steps each first remask the
  `remdm_number` tokens of the block that were decoded with the lowest score (or random ones),
  then decode `remdm_decode` rows.

A step with no work for any example of the batch (its block is done, or every example stopped
at EOS) skips the model call (`lax.cond`). With `kv_cache`, a block's first step runs the
whole sequence and keeps every position's keys and values; its later steps run the rows from
the block to the end ("prefix", in widths `prefix_widths`: earlier positions read the cache)
or the block alone ("dual": every other position reads the cache).

Randomness follows the sampler's rule: example `i` draws from `fold_in(key, first_index + i)`,
step `s` from `fold_in(that, s)` (split into remask, score and token keys), position `p` from
`fold_in(.., p)`; tokens do not depend on the batch split.

References:
  Nie et al., "Large Language Diffusion Models", 2025, arXiv 2502.09992 (and
  ML-GSAI/LLaDA `generate.py`).
  Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
  Scaling", NeurIPS 2025, arXiv 2503.00307 (guanghanwang/ReMDM-LLaDA `eval_llada.py`).
  Wu et al., "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and
  Parallel Decoding", 2025, arXiv 2505.22618 (NVlabs/Fast-dLLM `llada/generate.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.sampling import posterior
from remdm_jax.sampling.decoder import Decoder, Finish, Needs, RunShape, Scan, StepOut
from remdm_jax.sampling.windows import Geometry, make_window, rows
from remdm_jax.sampling.step_rules import (conf_weights, draw_at, greedy, position_keys,
                                           step_keys, tempered_probs, token_logp, top_count)
from remdm_jax.validation import check_scalar


class BlockTable(NamedTuple):
  """The steps of one block, each `[n]` (n = num_steps + remasking steps)."""

  t: jax.Array         # float32: 1 - (regular steps done) / num_steps, for trajectories
  regular: jax.Array   # int32: index among the block's regular steps; -1 on remasking steps
  remask: jax.Array    # int32: tokens remasked before the step (ReMDM-LLaDA)
  decode: jax.Array    # int32: rows decoded on a remasking step (0 on regular steps)
  sigma: jax.Array     # float32: remasking probability of a regular step (remask_sigma)


@dataclasses.dataclass(frozen=True)
class BlockRule(Decoder):
  """The static switches of block decoding (hashable, jit-static), and the decoder that runs
  a `BlockPlan`: its extent is the number of blocks, from the longest answer of the prompt."""

  block_length: int = 32
  num_steps: int = 32          # regular steps per block
  score: str = "low_confidence"
  greedy: bool = True          # temperature 0
  use_threshold: bool = False
  use_cfg: bool = False
  kv_cache: str = "none"
  remdm_select: str = "confidence"
  remask_sigma: str = "none"
  eos_id: int = -1

  def start(self, denoiser, plan, prompt, shape: RunShape, needs: Needs) -> Scan:
    return _start_blocks(denoiser, plan, prompt, shape, needs)

  def check_plan(self, plan):
    return check_block_plan(plan)

  def trajectory_length(self, plan, extent: int) -> int:
    """Blocks x steps per block (regular and remasking steps)."""
    return extent * int(plan.table.t.shape[0])

  def times(self, plan, steps: int) -> jax.Array:
    """The nominal time of each recorded step, `[steps] float32` (the table tiled)."""
    return jnp.tile(plan.table.t, steps // plan.table.t.shape[0])

  def check_call(self, denoiser, shape: RunShape) -> None:
    check_block_call(denoiser, self, shape.mask_id)

  def check_prompt(self, prompt) -> None:
    """Raises a `ValueError` for classifier-free guidance without a prompt (the unconditional
    logits would be the conditional ones, at twice the cost)."""
    if self.use_cfg and prompt is None:
      raise ValueError("cfg_scale > 0 guides by masking the prompt; this call has no prompt "
                       "(pass prompt= rows, or cfg_scale=0)")

  def check_vocab(self, vocab_size: int) -> None:
    """Raises a `ValueError` when `eos_id >= V` (an id the logits do not have)."""
    if self.eos_id >= vocab_size:
      raise ValueError(f"eos_id must be in [0, V) = [0, {vocab_size}) or -1, got "
                       f"{self.eos_id}")

  def extent(self, prompt, shape: RunShape) -> int:
    return num_blocks(self, prompt, shape.seq_len, shape.mask_id)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["table", "temperature", "threshold", "cfg_scale"],
                   meta_fields=["rule"])
@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """What the block scan consumes as data (the per-block step table and the scalar knobs) and
  its static rule. A sampler built for one config runs the plans of configs that differ only
  in temperature (above 0), threshold (above 0) or cfg_scale (above 0)."""

  table: BlockTable
  temperature: jax.Array   # [] float32 (unused when rule.greedy)
  threshold: jax.Array     # [] float32
  cfg_scale: jax.Array     # [] float32
  rule: BlockRule


def block_table(cfg) -> BlockTable:
  """The steps of one block of a `BlockConfig`: its `S` regular steps with the remasking
  steps inserted after `start` of them (host side)."""
  num_steps = cfg.steps_per_block
  start, steps, decode = cfg.window()
  regular = np.concatenate([np.arange(start), np.full(steps, -1),
                            np.arange(start, num_steps)]).astype(np.int32)
  window = regular < 0
  done = np.cumsum(~window) - (~window)                 # regular steps before each step
  sigma = np.where(window, 0.0, cfg.block_sigma()[np.maximum(regular, 0)])
  return BlockTable(t=jnp.asarray(1.0 - done / num_steps, jnp.float32),
                    regular=jnp.asarray(regular),
                    remask=jnp.asarray(np.where(window, cfg.remdm_number, 0), jnp.int32),
                    decode=jnp.asarray(np.where(window, decode, 0), jnp.int32),
                    sigma=jnp.asarray(sigma, jnp.float32))


def build_block_plan(cfg) -> tuple[BlockPlan, BlockRule]:
  """A `BlockConfig` as a plan and its rule (`BlockConfig.build_plan`)."""
  rule = BlockRule(block_length=cfg.block_length, num_steps=cfg.steps_per_block,
                   score=cfg.remasking, greedy=cfg.temperature == 0.0,
                   use_threshold=cfg.threshold > 0.0, use_cfg=cfg.cfg_scale > 0.0,
                   kv_cache=cfg.kv_cache, remdm_select=cfg.remdm_select,
                   remask_sigma=cfg.remask_sigma, eos_id=cfg.eos_id)
  plan = BlockPlan(table=block_table(cfg),
                   temperature=jnp.asarray(cfg.temperature, jnp.float32),
                   threshold=jnp.asarray(cfg.threshold, jnp.float32),
                   cfg_scale=jnp.asarray(cfg.cfg_scale, jnp.float32), rule=rule)
  return plan, rule


def check_block_plan(plan: BlockPlan) -> BlockPlan:
  """A block plan's concrete scalars in their ranges (a traced plan is data). A plan whose
  rule draws, thresholds or guides needs a temperature, threshold or cfg_scale above 0 (0
  means "off", which is another rule).

  Raises:
    ValueError: temperature outside [0, inf), threshold outside [0, 1], cfg_scale below 0,
      or one of them 0 where the rule uses it.
  """
  rule = plan.rule
  check_scalar("plan.temperature", plan.temperature, 0.0, low_open=not rule.greedy)
  check_scalar("plan.threshold", plan.threshold, 0.0, 1.0, low_open=rule.use_threshold)
  check_scalar("plan.cfg_scale", plan.cfg_scale, 0.0, low_open=rule.use_cfg)
  return plan


def check_block_call(denoiser, rule: BlockRule, mask_id: int) -> None:
  """Checks needing no tracing; warns when `kv_cache` must run uncached.

  Raises:
    ValueError: `eos_id` is the mask id.
  """
  if rule.eos_id == mask_id:
    raise ValueError(f"eos_id must not be the mask id {mask_id} (an answer would stop at "
                     "every still-masked position); pass the tokenizer's end-of-text id")
  if rule.kv_cache != "none" and not denoiser.has_kv_cache:
    warnings.warn(f"kv_cache={rule.kv_cache!r}: this denoiser has no key-value cache "
                  "contract (Denoiser.prefill_apply / cached_apply; LLaDA models have it), "
                  "so block decoding runs uncached", stacklevel=4)


def num_blocks(rule: BlockRule, prompt, seq_len: int, mask_id: int) -> int:
  """Blocks the scan runs: enough for the longest masked tail of a concrete prompt (all of
  `seq_len` for None, a traced prompt or one spread over other processes' devices; a mask
  inside such a prompt is not checked and stays in the output). Static: a new count compiles
  a new executable.

  Raises:
    ValueError: a concrete prompt row has a mask before its last non-mask id (block decoding
      decodes the masked tail only).
  """
  if prompt is None or isinstance(prompt, jax.core.Tracer) or (
      isinstance(prompt, jax.Array) and not prompt.is_fully_addressable):
    return math.ceil(seq_len / rule.block_length)
  rows = np.asarray(prompt)
  start = answer_start(rows, mask_id)
  inner = (rows == mask_id) & (np.arange(rows.shape[1]) < start[:, None])
  if inner.any():
    b, p = np.argwhere(inner)[0]
    raise ValueError(f"prompt row {b} has the mask id at position {p}, before its last "
                     f"prompt id at {start[b] - 1}; block decoding decodes the masked tail "
                     "after each prompt (use another strategy to infill)")
  return max(1, math.ceil(int(np.max(seq_len - start)) / rule.block_length))


def answer_start(z, mask_id: int):
  """`P_b`: the position after each row's last non-mask id (0 for an all-mask row);
  `[B, L] -> [B] int32` (NumPy or JAX)."""
  xp = np if isinstance(z, np.ndarray) else jnp
  positions = xp.arange(1, z.shape[1] + 1, dtype=np.int32)
  return xp.max(xp.where(z != mask_id, positions[None], 0), axis=1).astype(np.int32)


def block_geometry(start: jax.Array, block: jax.Array, block_length: int,
                   seq_len: int) -> Geometry:
  """Block `block` (`[]` int32, or `[B]`: each row's own) of each example, whose answer
  starts at `start [B] int32`."""
  first = start + block * block_length
  positions = first[:, None] + jnp.arange(block_length, dtype=jnp.int32)[None]
  return Geometry(first, jnp.minimum(positions, seq_len - 1), positions < seq_len)


def _scatter(x: jax.Array, positions: jax.Array, valid: jax.Array, values: jax.Array):
  """`x [B, L]` with `values [B, K]` written at the valid `positions`."""
  at = jnp.where(valid, positions, x.shape[1])             # out of range: dropped
  return x.at[jnp.arange(x.shape[0])[:, None], at].set(values, mode="drop")


def _position_uniform(keys: jax.Array, positions: jax.Array) -> jax.Array:
  """A uniform draw in [0, 1) per position, `[B, K] float32`, from `fold_in(keys[b], p)`."""
  return jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32)))(
      position_keys(keys, positions))


def _confidence(keys, logits, x0, positions) -> jax.Array:
  """`low_confidence`: the log of the full softmax probability of `x0`, `[B, K] float32`."""
  chosen = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
  return chosen - jax.nn.logsumexp(logits, axis=-1)


def _random_score(keys, logits, x0, positions) -> jax.Array:
  """`random`: the log of a uniform draw per position, `[B, K] float32` (finite)."""
  return jnp.log1p(-_position_uniform(keys[:, 1], positions))


SCORES = {"low_confidence": _confidence, "random": _random_score}   # BlockRule.score


def _choose(keys, logits, positions, plan: BlockPlan, score, mask_id: int):
  """Per block row: `x0 [B, K] int32` (argmax, or a draw of the tempered SUBS distribution),
  its `score` (a function of `SCORES`) `[B, K] float32` and `[B, K] bool`, no finite largest
  logit."""
  if plan.rule.greedy:
    x0, bad = greedy(logits, mask_id)
  else:
    probs, bad = tempered_probs(logits, mask_id, plan.temperature)          # [B, K, V]
    x0, _ = draw_at(keys[:, 2], probs, positions)
  return x0, score(keys, logits, x0, positions), bad


def _ranked(score: jax.Array, eligible: jax.Array) -> jax.Array:
  """Scores for `top_count`: every eligible row above every other one (a -inf or NaN score
  of an eligible row becomes the lowest finite float)."""
  floor = jnp.finfo(jnp.float32).min
  return jnp.where(eligible, jnp.nan_to_num(jnp.maximum(score, floor), nan=floor), -jnp.inf)


def _transfer_count(row, count, masked, remasked, score, plan, rule: BlockRule, last_step):
  """How many masked rows a step unmasks, `[B] int32`: the regular schedule's count (LLaDA's
  `get_num_transfer_tokens` of `count`, the block's masks at its start, plus the `remasked
  [B] int32` of `remask_sigma`) or the remasking step's `decode`; at least every row scoring
  `>= threshold`; all that are left on the block's last step."""
  steps = rule.num_steps
  regular = count // steps + (row.regular < count % steps).astype(jnp.int32) + remasked
  k = jnp.where(row.regular >= 0, regular, row.decode)
  n_masked = jnp.sum(masked, axis=-1)
  if rule.use_threshold:
    k = jnp.maximum(k, jnp.sum(masked & (score >= jnp.log(plan.threshold)), axis=-1))
  return jnp.where(last_step, n_masked, jnp.minimum(k, n_masked))


def _remask_by_sigma(key, row, candidates, track_w, positions, *, conf: bool):
  """`remask_sigma`: each candidate remasked with probability `row.sigma` (times the conf
  weights of the probabilities the tokens were decoded with)."""
  p = jnp.broadcast_to(per_row(row.sigma), candidates.shape)
  if conf:
    p = p * conf_weights(jnp.exp(track_w), candidates, "prob")
  return candidates & jax.vmap(posterior.bernoulli)(key, p)


def _remask_ranked(key, row, candidates, track_w, positions, *, by_confidence: bool):
  """ReMDM-LLaDA: the `row.remask` candidates decoded with the lowest score (or random ones;
  none on a regular step, where `row.remask` is 0)."""
  priority = -track_w if by_confidence else _position_uniform(key, positions)
  n = jnp.minimum(row.remask, jnp.sum(candidates, axis=-1))
  return candidates & top_count(_ranked(priority, candidates), n)


def remask_rule(rule: BlockRule):
  """The remasking function of a rule, picked once (outside the step): `fn(key, row,
  candidates [B, K] bool, track_w [B, K] float32, positions [B, K]) -> [B, K] bool`, the
  tokens of the block that go back to the mask before the step. Only tokens decoded in this
  block (a finite recorded score) are candidates."""
  if rule.remask_sigma != "none":
    return functools.partial(_remask_by_sigma, conf=rule.remask_sigma == "conf")
  return functools.partial(_remask_ranked, by_confidence=rule.remdm_select == "confidence")


def per_row(flag: jax.Array) -> jax.Array:
  """A step's scalar, or its per-row values `[B]`, as a column that broadcasts over `[B, K]`
  (or `[B, L]`) arrays."""
  return jnp.reshape(flag, (-1, 1))


def stop_at_eos(z, start, eos_id: int) -> jax.Array:
  """`z [B, L]` with every answer position after a row's first `eos_id` set to `eos_id`, so
  a row whose answer holds it has nothing left to decode."""
  position = jnp.arange(z.shape[1], dtype=jnp.int32)
  is_eos = (z == eos_id) & (position[None] >= start[:, None])
  first = jnp.min(jnp.where(is_eos, position, z.shape[1]), axis=1)
  return jnp.where(position[None] > first[:, None], eos_id, z)


class BlockCarry(NamedTuple):
  """The rows' state between block-decoding steps."""

  z: jax.Array           # [B, L] int32
  track: jax.Array       # [B, L] float32: score at which each token was decoded (+inf else)
  count: jax.Array       # [B] int32: masks of the current block at its start
  nonfinite: jax.Array   # [B] bool
  cache: object          # the model's key-value cache, or None


def make_block_step(model, plan: BlockPlan, rule: BlockRule, start, seq_len: int,
                    mask_id: int, steps_per_block: int, needs: Needs):
  """The scan body over the flat table (every block's steps): `step(carry, (index, block,
  row), keys) -> (carry, StepOut)`; the window (`model`), the score and the remasking rule are
  picked here, once. `index` (the step among all blocks' steps), `block` and the table `row`
  are one for the batch, or one per row (`[B]`, `remdm_jax.sampling.slots`)."""
  score, remask_fn = SCORES[rule.score], remask_rule(rule)

  def step(carry: BlockCarry, xs, step_row_keys):
    index, block, row = xs
    within = index % steps_per_block
    first_step, last_step = within == 0, within == steps_per_block - 1
    keys = step_keys(step_row_keys)
    geometry = block_geometry(start, block, rule.block_length, seq_len)
    z_w, track_w = rows(carry.z, geometry.positions), rows(carry.track, geometry.positions)
    count = jnp.where(first_step, jnp.sum(geometry.valid & (z_w == mask_id), axis=-1),
                      carry.count)
    candidates = geometry.valid & (z_w != mask_id) & jnp.isfinite(track_w)
    remask = remask_fn(keys[:, 0], row, candidates, track_w, geometry.positions)
    z_w = jnp.where(remask, mask_id, z_w)
    track_w = jnp.where(remask, jnp.inf, track_w)
    masked = geometry.valid & (z_w == mask_id)
    z = _scatter(carry.z, geometry.positions, geometry.valid, z_w)

    working = jnp.any(masked, axis=-1)

    def decode():
      logits, cache = model.logits(z, geometry, first_step, carry.cache, working)
      x0, scores, bad = _choose(keys, logits, geometry.positions, plan, score, mask_id)
      k = _transfer_count(row, count, masked, jnp.sum(remask, axis=-1), scores, plan, rule,
                          last_step)
      unmask = masked & top_count(_ranked(scores, masked), k)
      logp = (jnp.where(unmask, token_logp(logits, x0, mask_id), 0.0) if needs.logp
              else jnp.zeros((), jnp.float32))
      estimate = greedy(logits, mask_id)[0] if needs.predicted else x0
      return (jnp.where(unmask, x0, z_w), jnp.where(unmask, scores, track_w), unmask,
              jnp.any(bad & masked, axis=-1), cache, estimate, logp)

    def skip():
      return (z_w, track_w, jnp.zeros_like(masked), jnp.zeros_like(carry.nonfinite),
              carry.cache, z_w, jnp.zeros(masked.shape if needs.logp else (), jnp.float32))

    z_w, track_w, unmask, bad, cache, estimate, logp = jax.lax.cond(jnp.any(working), decode,
                                                                     skip)
    z = _scatter(z, geometry.positions, geometry.valid, z_w)
    track = _scatter(carry.track, geometry.positions, geometry.valid, track_w)
    if rule.eos_id >= 0:
      z = jnp.where(per_row(last_step), stop_at_eos(z, start, rule.eos_id), z)
    in_block = lambda values, base: _scatter(base, geometry.positions, geometry.valid, values)
    out = StepOut(z, in_block(unmask, jnp.zeros_like(z, bool)),
                  in_block(remask, jnp.zeros_like(z, bool)),
                  model.calls(first_step, working), last_step,
                  in_block(logp, jnp.zeros(z.shape, jnp.float32)) if needs.logp else None,
                  in_block(jnp.where(z_w == mask_id, estimate, z_w), z) if needs.predicted
                  else None)
    return BlockCarry(z, track, count, carry.nonfinite | bad, cache), out

  return step


def _start_blocks(denoiser, plan: BlockPlan, prompt, shape: RunShape, needs: Needs) -> Scan:
  """`BlockRule.start`: the block-decoding scan over `shape.extent` blocks of steps."""
  batch_size, seq_len, mask_id = shape.batch_size, shape.seq_len, shape.mask_id
  blocks = shape.extent
  rule = plan.rule
  z = jnp.full((batch_size, seq_len), mask_id, jnp.int32) if prompt is None else prompt
  if shape.batch_sharding is not None:
    z = jax.lax.with_sharding_constraint(z, shape.batch_sharding)
  start = answer_start(z, mask_id)
  tail = min(seq_len, blocks * rule.block_length)
  model = make_window(denoiser, rule, plan, z != mask_id, seq_len, mask_id, tail)
  steps_per_block = plan.table.t.shape[0]
  step = make_block_step(model, plan, rule, start, seq_len, mask_id, steps_per_block, needs)
  total = blocks * steps_per_block
  table = jax.tree.map(lambda a: jnp.tile(a, blocks), plan.table)
  xs = (jnp.arange(total, dtype=jnp.int32),
        jnp.repeat(jnp.arange(blocks, dtype=jnp.int32), steps_per_block), table)
  carry = BlockCarry(z, jnp.full(z.shape, jnp.inf, jnp.float32),
                 jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), bool),
                 model.init_cache(z))
  return Scan(carry, xs, step, lambda carry: Finish(
      carry.z, carry.nonfinite, jnp.zeros(carry.z.shape, bool), jnp.bool_(False),
      jnp.zeros(carry.z.shape, jnp.float32) if needs.logp else None))
