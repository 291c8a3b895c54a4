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
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.sampling import posterior
from remdm_jax.sampling.step_rules import (conf_weights, draw_at, example_keys, greedy,
                                           position_keys, step_keys, tempered_probs, top_count)
from remdm_jax.validation import check_scalar


class BlockTable(NamedTuple):
  """The steps of one block, each `[n]` (n = num_steps + remasking steps)."""

  t: jax.Array         # float32: 1 - (regular steps done) / num_steps, for trajectories
  regular: jax.Array   # int32: index among the block's regular steps; -1 on remasking steps
  remask: jax.Array    # int32: tokens remasked before the step (ReMDM-LLaDA)
  decode: jax.Array    # int32: rows decoded on a remasking step (0 on regular steps)
  sigma: jax.Array     # float32: remasking probability of a regular step (remask_sigma)


@dataclasses.dataclass(frozen=True)
class BlockRule:
  """The static switches of block decoding (hashable, jit-static)."""

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


def block_table(strategy, num_steps: int) -> BlockTable:
  """The steps of one block: `num_steps` regular steps with the remasking steps inserted
  after `start` of them (host side)."""
  start, steps, decode = strategy.window(num_steps)
  regular = np.concatenate([np.arange(start), np.full(steps, -1),
                            np.arange(start, num_steps)]).astype(np.int32)
  window = regular < 0
  done = np.cumsum(~window) - (~window)                 # regular steps before each step
  sigma = np.where(window, 0.0, strategy.block_sigma(num_steps)[np.maximum(regular, 0)])
  return BlockTable(t=jnp.asarray(1.0 - done / num_steps, jnp.float32),
                    regular=jnp.asarray(regular),
                    remask=jnp.asarray(np.where(window, strategy.remdm_number, 0), jnp.int32),
                    decode=jnp.asarray(np.where(window, decode, 0), jnp.int32),
                    sigma=jnp.asarray(sigma, jnp.float32))


def build_block_plan(cfg) -> tuple[BlockPlan, BlockRule]:
  """A block-decoding config (strategy "llada") as a plan and its rule."""
  strategy = cfg.strategy
  rule = BlockRule(block_length=strategy.block_length, num_steps=cfg.num_steps,
                   score=strategy.remasking, greedy=cfg.temperature == 0.0,
                   use_threshold=strategy.threshold > 0.0, use_cfg=strategy.cfg_scale > 0.0,
                   kv_cache=strategy.kv_cache, remdm_select=strategy.remdm_select,
                   remask_sigma=strategy.remask_sigma, eos_id=strategy.eos_id)
  plan = BlockPlan(table=block_table(strategy, cfg.num_steps),
                   temperature=jnp.asarray(cfg.temperature, jnp.float32),
                   threshold=jnp.asarray(strategy.threshold, jnp.float32),
                   cfg_scale=jnp.asarray(strategy.cfg_scale, jnp.float32), rule=rule)
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


def check_block_prompt(rule: BlockRule, prompt) -> None:
  """Raises a `ValueError` for classifier-free guidance without a prompt (the unconditional
  logits would be the conditional ones, at twice the cost)."""
  if rule.use_cfg and prompt is None:
    raise ValueError("cfg_scale > 0 guides by masking the prompt; this call has no prompt "
                     "(pass prompt= rows, or cfg_scale=0)")


def check_eos(rule: BlockRule, vocab_size: int) -> None:
  """Raises a `ValueError` when `eos_id >= V` (an id the logits do not have)."""
  if rule.eos_id >= vocab_size:
    raise ValueError(f"eos_id must be in [0, V) = [0, {vocab_size}) or -1, got {rule.eos_id}")


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


class _Geometry(NamedTuple):
  """Where block `j` lies for each example."""

  first: jax.Array       # [B] int32, P_b + jK (may be >= L: the block is empty)
  positions: jax.Array   # [B, K] int32, P_b + jK + k, clipped to L - 1
  valid: jax.Array       # [B, K] bool, the unclipped position is < L


def _geometry(start: jax.Array, block: jax.Array, block_length: int,
              seq_len: int) -> _Geometry:
  """Block `block` ([] int32) of each example, whose answer starts at `start [B] int32`."""
  first = start + block * block_length
  positions = first[:, None] + jnp.arange(block_length, dtype=jnp.int32)[None]
  return _Geometry(first, jnp.minimum(positions, seq_len - 1), positions < seq_len)


def _rows(x: jax.Array, positions: jax.Array) -> jax.Array:
  """`x [B, L, ...]` at `positions [B, K]` -> `[B, K, ...]`."""
  index = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def _scatter(x: jax.Array, positions: jax.Array, valid: jax.Array, values: jax.Array):
  """`x [B, L]` with `values [B, K]` written at the valid `positions`."""
  at = jnp.where(valid, positions, x.shape[1])             # out of range: dropped
  return x.at[jnp.arange(x.shape[0])[:, None], at].set(values, mode="drop")


class _Model(NamedTuple):
  """How a step obtains the block's logits (the unconditional rows of CFG, if any, are
  stacked after the conditional ones inside)."""

  window_logits: Callable   # (z [B, L], geometry, first step of the block [] bool, cache)
                            # -> (logits [B, K, V] float32, cache)
  init_cache: Callable      # z [B, L] -> a zero cache of the right structure, or None


def _head_rows(denoiser, h_or_logits, positions, t, split: bool) -> jax.Array:
  """Logits `[B, K, V] float32` at `positions [B, K]` from what the model computed at every
  row it ran (`[B, W, D]` features of a split denoiser, else `[B, W, V]` logits)."""
  rows = _rows(h_or_logits, positions)
  return (denoiser.head(rows, t) if split else rows).astype(jnp.float32)


def prefix_widths(tail: int, block_length: int) -> tuple[int, ...]:
  """The static row counts of the prefix cache's later steps: `K, 2K, 4K, ...` below `tail`,
  then `tail` (the longest answer). A step runs the smallest that reaches back to the batch's
  earliest block start, so a late block runs few rows (Fast-dLLM's window shrinks block by
  block; here it shrinks by halves, one compiled model call per width)."""
  widths, width = [], block_length
  while width < tail:
    widths.append(width)
    width *= 2
  return tuple(widths) + (tail,)


def _make_model(denoiser, rule: BlockRule, plan: BlockPlan, fixed, seq_len, mask_id,
                tail: int) -> _Model:
  """The block's logits for the step, per `rule.kv_cache` and `rule.use_cfg`; `fixed [B, L]
  bool` marks the prompt, `tail` is the longest answer (rows, static)."""
  split = denoiser.is_split
  cached = rule.kv_cache != "none" and denoiser.has_kv_cache
  twice = (lambda x: jnp.concatenate([x, x])) if rule.use_cfg else (lambda x: x)

  def inputs(z):
    """The rows the model sees: z, and z with the prompt masked under CFG."""
    if not rule.use_cfg:
      return z
    return jnp.concatenate([z, jnp.where(fixed, mask_id, z)])

  def combine(logits):
    """CFG's `un + (s + 1)(cond - un)` of the stacked logits."""
    if not rule.use_cfg:
      return logits
    cond, uncond = jnp.split(logits, 2)
    return uncond + (plan.cfg_scale + 1.0) * (cond - uncond)

  def t_of(seqs):     # the masked share, for denoisers that read t (LLaDA ignores it)
    return jnp.maximum(jnp.mean((seqs == mask_id).astype(jnp.float32), axis=1), 1e-5)

  def full(seqs, geometry):
    """Uncached: the model on every row, the head (or the logits) read at the block."""
    t = t_of(seqs)
    out = denoiser.features(seqs, t) if split else denoiser(seqs, t)
    return _head_rows(denoiser, out, twice(geometry.positions), t, split)

  def prefill(seqs, geometry):
    """A block's first step: every row, keeping every position's keys and values."""
    h, cache = denoiser.prefill(seqs)
    return _head_rows(denoiser, h, twice(geometry.positions), None, True), cache

  def reuse(seqs, geometry, cache):
    """A block's later steps: the block alone (dual), or the rows from it on (prefix)."""
    positions, valid = twice(geometry.positions), twice(geometry.valid)
    if rule.kv_cache == "dual":
      h = denoiser.cached(_rows(seqs, positions), positions, valid, cache)
      return _head_rows(denoiser, h, jnp.broadcast_to(jnp.arange(positions.shape[1]),
                                                      positions.shape), None, True)
    widths = prefix_widths(tail, rule.block_length)
    block_first = twice(geometry.first)
    needed = seq_len - jnp.min(block_first)                 # rows from the earliest block on
    branches = [functools.partial(prefix_rows, width=w) for w in widths]
    index = jnp.minimum(jnp.searchsorted(jnp.asarray(widths), needed), len(widths) - 1)
    return jax.lax.switch(index, branches, seqs, positions, block_first, cache)

  def prefix_rows(seqs, positions, block_first, cache, *, width: int):
    """The prefix cache's later steps: the last `width` rows run, those from each row's
    block on with their own keys and values, the earlier ones reading the cache."""
    first = seq_len - width
    at = jnp.broadcast_to(first + jnp.arange(width, dtype=jnp.int32), (seqs.shape[0], width))
    h = denoiser.cached(seqs[:, first:], at, at >= block_first[:, None], cache)
    return _head_rows(denoiser, h, jnp.clip(positions - first, 0, width - 1), None, True)

  def window_logits(z, geometry, first_step, cache):
    seqs = inputs(z)
    if not cached:
      return combine(full(seqs, geometry)), cache
    logits, cache = jax.lax.cond(first_step, lambda: prefill(seqs, geometry),
                                 lambda: (reuse(seqs, geometry, cache), cache))
    return combine(logits), cache

  def init_cache(z):
    if not cached:
      return None
    shape = jax.eval_shape(lambda s: denoiser.prefill(s)[1], inputs(z))
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shape)

  return _Model(window_logits, init_cache)


def _position_uniform(keys: jax.Array, positions: jax.Array) -> jax.Array:
  """A uniform draw in [0, 1) per position, `[B, K] float32`, from `fold_in(keys[b], p)`."""
  return jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32)))(
      position_keys(keys, positions))


def _choose(keys, logits, positions, plan: BlockPlan, rule: BlockRule, mask_id: int):
  """Per block row: `x0 [B, K] int32` (argmax, or a draw of the tempered SUBS distribution),
  its score `[B, K] float32` (log of the full softmax probability of `x0`, or of a uniform
  draw for random remasking) and `[B, K] bool`, no finite largest logit."""
  if rule.greedy:
    x0, bad = greedy(logits, mask_id)
  else:
    probs, bad = tempered_probs(logits, mask_id, plan.temperature)          # [B, K, V]
    x0, _ = draw_at(keys[:, 2], probs, positions)
  if rule.score == "low_confidence":
    chosen = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
    score = chosen - jax.nn.logsumexp(logits, axis=-1)
  else:
    score = jnp.log1p(-_position_uniform(keys[:, 1], positions))   # log of (0, 1]: finite
  return x0, score, bad


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


def _remask(key, row, z_w, track_w, valid, rule: BlockRule, positions, mask_id):
  """Tokens of the block that go back to the mask before the step, `[B, K] bool`; only
  tokens decoded in this block (a finite recorded score) are candidates. ReMDM-LLaDA steps
  remask the `row.remask` decoded with the lowest score (or random ones); with
  `remask_sigma`, each candidate is remasked with probability `row.sigma` (times the conf
  weights)."""
  candidates = valid & (z_w != mask_id) & jnp.isfinite(track_w)
  if rule.remask_sigma != "none":
    p = jnp.broadcast_to(row.sigma, z_w.shape)
    if rule.remask_sigma == "conf":
      p = p * conf_weights(jnp.exp(track_w), candidates, "prob")
    return candidates & jax.vmap(posterior.bernoulli)(key, p)
  if rule.remdm_select == "confidence":
    priority = -track_w
  else:
    priority = _position_uniform(key, positions)
  n = jnp.minimum(row.remask, jnp.sum(candidates, axis=-1))
  return candidates & top_count(_ranked(priority, candidates), n)


def _stop_at_eos(z, start, eos_id: int) -> jax.Array:
  """`z [B, L]` with every answer position after a row's first `eos_id` set to `eos_id`, so
  a row whose answer holds it has nothing left to decode."""
  position = jnp.arange(z.shape[1], dtype=jnp.int32)
  is_eos = (z == eos_id) & (position[None] >= start[:, None])
  first = jnp.min(jnp.where(is_eos, position, z.shape[1]), axis=1)
  return jnp.where(position[None] > first[:, None], eos_id, z)


class _Carry(NamedTuple):
  z: jax.Array           # [B, L] int32
  track: jax.Array       # [B, L] float32: score at which each token was decoded (+inf else)
  count: jax.Array       # [B] int32: masks of the current block at its start
  nonfinite: jax.Array   # [B] bool
  cache: object          # the model's key-value cache, or None


def _make_step(model: _Model, plan: BlockPlan, rule: BlockRule, start, example_keys,
               seq_len: int, mask_id: int, steps_per_block: int, record: bool, on_step):
  """The scan body over the flat table (every block's steps)."""

  def step(carry: _Carry, xs):
    index, block, row = xs
    if on_step is not None:
      jax.debug.callback(on_step, index)
    within = index % steps_per_block
    first_step, last_step = within == 0, within == steps_per_block - 1
    keys = step_keys(example_keys, index)
    geometry = _geometry(start, block, rule.block_length, seq_len)
    z_w, track_w = _rows(carry.z, geometry.positions), _rows(carry.track, geometry.positions)
    count = jnp.where(first_step, jnp.sum(geometry.valid & (z_w == mask_id), axis=-1),
                      carry.count)
    remask = _remask(keys[:, 0], row, z_w, track_w, geometry.valid, rule, geometry.positions,
                     mask_id)
    z_w = jnp.where(remask, mask_id, z_w)
    track_w = jnp.where(remask, jnp.inf, track_w)
    masked = geometry.valid & (z_w == mask_id)
    z = _scatter(carry.z, geometry.positions, geometry.valid, z_w)

    def decode():
      logits, cache = model.window_logits(z, geometry, first_step, carry.cache)
      x0, score, bad = _choose(keys, logits, geometry.positions, plan, rule, mask_id)
      k = _transfer_count(row, count, masked, jnp.sum(remask, axis=-1), score, plan, rule,
                          last_step)
      unmask = masked & top_count(_ranked(score, masked), k)
      return (jnp.where(unmask, x0, z_w), jnp.where(unmask, score, track_w), unmask,
              jnp.any(bad & masked, axis=-1), cache)

    def skip():
      return z_w, track_w, jnp.zeros_like(masked), jnp.zeros_like(carry.nonfinite), carry.cache

    z_w, track_w, unmask, bad, cache = jax.lax.cond(jnp.any(masked), decode, skip)
    z = _scatter(z, geometry.positions, geometry.valid, z_w)
    track = _scatter(carry.track, geometry.positions, geometry.valid, track_w)
    if rule.eos_id >= 0:
      z = jnp.where(last_step, _stop_at_eos(z, start, rule.eos_id), z)
    out = None
    if record:
      out = (z, _scatter(jnp.zeros_like(z, bool), geometry.positions, geometry.valid, unmask),
             _scatter(jnp.zeros_like(z, bool), geometry.positions, geometry.valid, remask))
    return _Carry(z, track, count, carry.nonfinite | bad, cache), out

  return step


def run_blocks(key, denoiser, plan: BlockPlan, prompt, first_index, *, batch_size: int,
               seq_len: int, mask_id: int, batch_sharding, record: bool, on_step,
               blocks: int):
  """The whole block-decoding run, traceable: `(tokens [B, L] int32, nonfinite [B] bool,
  records)` as `sampling._run`, with `blocks` (static) blocks of steps."""
  rule = plan.rule
  z = jnp.full((batch_size, seq_len), mask_id, jnp.int32) if prompt is None else prompt
  if batch_sharding is not None:
    z = jax.lax.with_sharding_constraint(z, batch_sharding)
  start = answer_start(z, mask_id)
  keys = example_keys(key, first_index, batch_size)
  tail = min(seq_len, blocks * rule.block_length)
  model = _make_model(denoiser, rule, plan, z != mask_id, seq_len, mask_id, tail)
  steps_per_block = plan.table.t.shape[0]
  step = _make_step(model, plan, rule, start, keys, seq_len, mask_id,
                    steps_per_block, record, on_step)
  total = blocks * steps_per_block
  table = jax.tree.map(lambda a: jnp.tile(a, blocks), plan.table)
  xs = (jnp.arange(total, dtype=jnp.int32),
        jnp.repeat(jnp.arange(blocks, dtype=jnp.int32), steps_per_block), table)
  carry = _Carry(z, jnp.full(z.shape, jnp.inf, jnp.float32),
                 jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), bool),
                 model.init_cache(z))
  carry, records = jax.lax.scan(step, carry, xs)
  return carry.z, carry.nonfinite, records


def trajectory_times(plan: BlockPlan, steps: int) -> jax.Array:
  """The nominal time of each recorded step, `[steps] float32` (the table tiled)."""
  return jnp.tile(plan.table.t, steps // plan.table.t.shape[0])

