"""The sampler: one `jax.lax.scan` over the steps of any strategy.

`sample` is pure (key in, tokens out) and composable inside a user's `jit`, `vmap` or
sharded program; called outside any trace it compiles once per denoiser, config and shape
and caches the executable. `make_sampler` is the fast path for models: one compiled
function with the parameters as an argument. Strategy differences live in the `Plan` arrays
built by `plan.build_plan`; the step below is written once.

Randomness is per example and per position: example `i` of a call draws only from
`fold_in(key, first_index + i)`, step `j` from `fold_in(that, j)` (split into remask, unmask
and token keys), and the token of position `p` from `fold_in(token key, p)`. The tokens
therefore do not depend on the batch split, the number of devices or `position_chunk`.

References:
  Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
  Scaling", NeurIPS 2025, arXiv 2503.00307 (sections 3-4, eq. 6).
  Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024,
  arXiv 2406.07524 (SUBS, the final noise-removal step, caching).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax import posterior
from remdm_jax.config import SamplerConfig
from remdm_jax.diffusion import Denoiser, subs_log_probs, without_mask
from remdm_jax.plan import Plan, StepRule, build_plan
from remdm_jax.rounds import in_rounds
from remdm_jax.topp import top_p_filter
from remdm_jax.trajectory import Trajectory
from remdm_jax.validation import check_int


class NonFiniteLogitsError(FloatingPointError):
  """The denoiser returned logits that define no distribution where a token was drawn."""


def nonfinite_message(flags: np.ndarray, first_index: int) -> str:
  """What went wrong, naming the global indices of the flagged examples (`flags [B] bool`)."""
  bad = (np.flatnonzero(flags) + first_index).tolist()
  return (f"the denoiser returned non-finite logits (NaN, +inf, or -inf for every id but the "
          f"mask) at masked positions of {len(bad)} of {len(flags)} examples (global "
          f"indices {bad[:8]}{'...' if len(bad) > 8 else ''}); their tokens would be "
          "meaningless. Check the model's parameters and inputs")


def _raise_nonfinite(flags, first_index) -> None:
  """Host side of the check: raises when any example's flag is set."""
  flags = np.asarray(flags)
  if flags.any():
    raise NonFiniteLogitsError(nonfinite_message(flags, int(first_index)))


def as_typed_key(key: jax.Array) -> jax.Array:
  """Accepts a typed key (`jax.random.key`) or a legacy `uint32[2]` key; returns a typed one."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single key (shape ()), got shape {key.shape}")
    return key
  if key.dtype != jnp.uint32 or key.shape != (2,):
    raise ValueError(
        "key must be jax.random.key(seed) or a legacy jax.random.PRNGKey(seed) uint32[2], "
        f"got {key.dtype}{list(key.shape)}")
  return jax.random.wrap_key_data(key)


def _check_sizes(batch_size, seq_len, mask_id) -> None:
  check_int("batch_size", batch_size, 1)
  check_int("seq_len", seq_len, 1)
  check_int("mask_id", mask_id, 0)


def _check_first_index(first_index):
  """An int >= 0, or a traced integer scalar (e.g. a jit argument)."""
  if isinstance(first_index, jax.Array):
    if first_index.shape != () or not jnp.issubdtype(first_index.dtype, jnp.integer):
      raise ValueError(f"first_index must be an integer scalar, got "
                       f"{first_index.dtype}{list(first_index.shape)}")
    if not isinstance(first_index, jax.core.Tracer):
      check_int("first_index", int(first_index), 0)
    return first_index
  return check_int("first_index", first_index, 0)


@functools.lru_cache(maxsize=64)
def _vocab_size(denoiser: Denoiser, batch_size: int, seq_len: int, mask_id: int) -> int:
  """Traces the denoiser abstractly and checks its output; returns V (cached per denoiser
  and shape, so repeated calls do not trace it again)."""
  if not callable(denoiser):
    raise ValueError(f"denoiser must be a function (z [B, L] int32, t [B] float32) -> "
                     f"logits [B, L, V], got {denoiser!r:.80}")
  out = jax.eval_shape(denoiser, jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32),
                       jax.ShapeDtypeStruct((batch_size,), jnp.float32))
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 3 or shape[:2] != (batch_size, seq_len):
    raise ValueError(
        f"denoiser must return logits [batch_size, seq_len, V] = [{batch_size}, {seq_len}, V], "
        f"got {shape}")
  if not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(f"denoiser must return floating logits, got dtype {out.dtype}")
  if not mask_id < shape[2]:
    raise ValueError(f"mask_id must be in [0, V) = [0, {shape[2]}), got {mask_id}")
  return shape[2]


def _check_prompt(prompt, batch_size: int, seq_len: int, vocab_size: int) -> jax.Array:
  """A `[B, L]`, `[1, L]` or `[L]` integer prompt as `[B, L] int32`; checks shape and dtype
  always, and the id range when the prompt is concrete."""
  concrete = not isinstance(prompt, jax.core.Tracer)
  prompt = np.asarray(prompt) if concrete else prompt
  if prompt.shape not in ((batch_size, seq_len), (1, seq_len), (seq_len,)):
    raise ValueError(
        f"prompt must have shape [batch_size, seq_len] = [{batch_size}, {seq_len}], "
        f"[1, {seq_len}] or [{seq_len}], got {list(prompt.shape)}")
  if not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f"prompt must hold integer ids, got dtype {prompt.dtype}")
  if concrete:
    low, high = int(prompt.min()), int(prompt.max())
    if low < 0 or high >= vocab_size:
      raise ValueError(
          f"prompt ids must be in [0, V) = [0, {vocab_size}), got values in [{low}, {high}]")
  return jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (batch_size, seq_len))


def _conf_weights(psi: jax.Array, decoded: jax.Array, score: str) -> jax.Array:
  """Softmax over decoded positions of `-psi` (paper) or `-log psi`; 0 elsewhere; `[B, L] f32`."""
  logit = -psi if score == "prob" else -jnp.log(psi)
  logit = jnp.where(decoded, logit, -jnp.inf)
  top = jnp.max(logit, axis=-1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  weight = jnp.where(decoded, jnp.exp(logit - top), 0.0)
  return weight / jnp.maximum(jnp.sum(weight, axis=-1, keepdims=True), 1e-30)


def _select_bernoulli(keys, row, rule, z, fixed, mask_id, psi):
  """Per-token coin flips of eq. 6; returns `(unmask, remask)`, both `[B, L] bool`. They
  depend on the table row, the carry and the keys only, not on `x_theta`."""
  masked = z == mask_id
  decoded = ~masked & ~fixed
  sigma = jnp.broadcast_to(row.sigma, z.shape)
  if rule.conf_score is not None:
    sigma = sigma * _conf_weights(psi, decoded, rule.conf_score)
  p_remask, p_unmask = posterior.transition_probs(row, sigma)
  remask = decoded & jax.vmap(posterior.bernoulli)(keys[:, 0], p_remask)
  unmask = masked & jax.vmap(posterior.bernoulli)(keys[:, 1], p_unmask)
  return unmask, remask


def _top_count(score: jax.Array, count: jax.Array) -> jax.Array:
  """Marks the `count[b]` highest scores of each row; `[B, L] f32, [B] int32 -> [B, L] bool`."""
  rank = jnp.argsort(jnp.argsort(-score, axis=-1), axis=-1)        # [B, L]
  return rank < count[:, None]


def _select_rank(keys, row, z, fixed, mask_id, psi, token_prob):
  """Confidence decoding: remask the least confident decoded tokens, unmask the most confident.

  The decoded count after the step is `round(decoded_frac * free positions)` per example.
  """
  del keys
  masked = z == mask_id
  decoded = ~masked & ~fixed
  n_free = jnp.sum(~fixed, axis=-1)
  n_decoded = jnp.sum(decoded, axis=-1)
  n_remask = jnp.minimum(row.remask_count, n_decoded)
  remask = decoded & _top_count(jnp.where(decoded, -psi, -jnp.inf), n_remask)
  target = jnp.round(row.decoded_frac * n_free).astype(jnp.int32)
  n_unmask = jnp.clip(target - (n_decoded - n_remask), 0, jnp.sum(masked, axis=-1))
  unmask = masked & _top_count(jnp.where(masked, token_prob, -jnp.inf), n_unmask)
  return unmask, remask


def _x_theta(logits: jax.Array, plan: Plan, rule: StepRule,
             mask_id: int) -> tuple[jax.Array, jax.Array]:
  """SUBS probabilities after temperature and top-p, `[B, L, V] float32`, and where they are
  not a distribution (a NaN or +inf logit, or -inf for every id but the mask), `[B, L] bool`."""
  log_probs = subs_log_probs(logits, mask_id, plan.temperature)   # [B, L, V] f32
  nonfinite = ~jnp.isfinite(jnp.max(log_probs, axis=-1))                    # [B, L]
  probs = jnp.exp(log_probs)
  if rule.use_top_p:
    probs = top_p_filter(probs, plan.top_p, mode=rule.top_p_mode, impl=rule.top_p_impl)
  return probs, nonfinite


def _draw_positions(token_keys, logits, positions, plan, rule, mask_id):
  """x_theta and one draw for each row of `logits [B, C, V]`, the row of position
  `positions[b, c]` drawn with key `fold_in(token_keys[b], positions[b, c])`.

  Returns `(ids [B, C] int32, prob [B, C] f32, nonfinite [B, C] bool)`."""
  keys = jax.vmap(lambda k, ps: jax.vmap(lambda p: jax.random.fold_in(k, p))(ps))(
      token_keys, positions)                                                   # [B, C]
  probs, nonfinite = _x_theta(logits, plan, rule, mask_id)                     # [B, C, V]
  return (*jax.vmap(jax.vmap(posterior.draw_categorical))(keys, probs), nonfinite)


def _draw_all(token_keys, logits, plan, rule, mask_id):
  """Draws for every position (the rank rule needs them all); with `rule.position_chunk = C`
  for C positions at a time, so only `[B, C, V]` temporaries are live."""
  batch, length = logits.shape[:2]
  chunk = rule.position_chunk or length

  def part(start, logits_part):
    positions = jnp.broadcast_to(start + jnp.arange(chunk, dtype=jnp.int32), (batch, chunk))
    return _draw_positions(token_keys, logits_part, positions, plan, rule, mask_id)

  if chunk == length:
    return part(0, logits)

  def body(index, out):
    start = index * chunk
    new = part(start, jax.lax.dynamic_slice_in_dim(logits, start, chunk, axis=1))
    return tuple(jax.lax.dynamic_update_slice_in_dim(whole, piece, start, axis=1)
                 for whole, piece in zip(out, new))

  init = (jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch, length), jnp.float32),
          jnp.zeros((batch, length), bool))
  return jax.lax.fori_loop(0, length // chunk, body, init)


def draw_capacity(rule: StepRule, seq_len: int) -> int:
  """K, the positions per example drawn in one round: `rule.draw_capacity` if set, else the
  largest expected number of MDLM unmaskings in a step, `L * max(alpha_s - alpha_t)`, plus a
  binomial margin (4 sd + 8). Steps that unmask more (remasking strategies re-unmask) take
  further rounds; the tokens do not depend on K."""
  if rule.draw_capacity:
    return min(rule.draw_capacity, seq_len)
  mean = seq_len * rule.unmask_fraction
  return min(seq_len, int(np.ceil(mean + 4.0 * np.sqrt(mean) + 8.0)))


def _draw_selected(token_keys, rows_at, selected, capacity, plan, rule, mask_id):
  """Draws only at `selected [B, L]` positions, `rows_at(positions [B, K]) -> logits
  [B, K, V]` giving their rows, with the same per-position keys as `_draw_all`.

  Returns `(ids [B, L] int32, prob [B, L] f32, nonfinite [B, L] bool)`, meaningful where
  `selected` (0, 0 and False elsewhere)."""
  compute = lambda positions: _draw_positions(token_keys, rows_at(positions), positions, plan,
                                              rule, mask_id)
  return in_rounds(selected, capacity, compute)


def is_split(denoiser) -> bool:
  """Whether a denoiser also offers the split contract: `features(z [B, L] int32, t [B] f32)
  -> h [B, L, D]` and a position-wise `head(h [B, K, D], t [B]) -> logits [B, K, V]` with
  `head(features(z, t), t) == denoiser(z, t)`. The Bernoulli strategies then apply the head
  only to the rows they draw, so the `[B, L, V]` logits are never formed in the steps."""
  return callable(getattr(denoiser, "features", None)) and callable(
      getattr(denoiser, "head", None))


def _step_keys(example_keys: jax.Array, step: jax.Array) -> jax.Array:
  """Keys `[B, 3]` (remask, unmask, token) of one step, derived per example."""
  return jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, step), 3))(example_keys)


def _as_logits_dtype(logits: jax.Array, rule: StepRule) -> jax.Array:
  """Logits held in `rule.logits_dtype` ("auto": as emitted); probabilities are float32 later."""
  return logits if rule.logits_dtype == "auto" else logits.astype(rule.logits_dtype)


def _step_output(denoiser, rule: StepRule):
  """`(fn(z, t), split)`: what a step computes at every position (and what the cache holds):
  the features of a split denoiser for the Bernoulli rules, else the logits in
  `rule.logits_dtype`."""
  if rule.select == "bernoulli" and is_split(denoiser):
    return denoiser.features, True
  return (lambda z, t: _as_logits_dtype(denoiser(z, t), rule)), False


def _make_step(denoiser, plan, rule, example_keys, fixed, mask_id, record, on_step):
  """The scan body, shared by every strategy."""
  capacity = draw_capacity(rule, fixed.shape[1])
  output, split = _step_output(denoiser, rule)

  def step(carry, xs):
    z, psi, nonfinite, cache = carry
    index, row = xs
    if on_step is not None:
      jax.debug.callback(on_step, index)
    t = jnp.full(z.shape[:1], row.t, jnp.float32)
    call = lambda: output(z, t)   # split: the trunk everywhere, the head only where drawn
    if rule.cache:
      cached, changed = cache
      computed = jax.lax.cond(changed, call, lambda: cached)
    else:
      computed = call()
    keys = _step_keys(example_keys, index)
    masked = z == mask_id
    if rule.select == "rank":      # confidence ranking needs every masked position's draw
      tokens, token_prob, bad = _draw_all(keys[:, 2], computed, plan, rule, mask_id)
      unmask, remask = _select_rank(keys, row, z, fixed, mask_id, psi, token_prob)
      drawn = masked
    else:                          # decide, then draw only where a token is unmasked
      unmask, remask = _select_bernoulli(keys, row, rule, z, fixed, mask_id, psi)
      rows_at = _row_reader(denoiser, computed, t, split, rule)
      tokens, token_prob, bad = _draw_selected(keys[:, 2], rows_at, unmask, capacity, plan,
                                               rule, mask_id)
      drawn = unmask
    z_next = jnp.where(unmask, tokens, jnp.where(remask, mask_id, z))
    psi_next = jnp.where(unmask, token_prob, jnp.where(remask, 0.0, psi))
    nonfinite = nonfinite | jnp.any(bad & drawn, axis=-1)
    if rule.cache:
      cache = (computed, jnp.any(z_next != z))
    return (z_next, psi_next, nonfinite, cache), ((z_next, unmask, remask) if record else None)

  return step


def _row_reader(denoiser, computed, t, split, rule):
  """`rows_at(positions [B, K] int32) -> logits [B, K, V]` from what a step computed at
  every position (`_step_output`): gathered logits, or the head applied to gathered features."""
  gather = lambda positions: jnp.take_along_axis(computed, positions[..., None], axis=1)
  if split:
    return lambda positions: _as_logits_dtype(denoiser.head(gather(positions), t), rule)
  return gather


def _greedy(logits: jax.Array, mask_id: int) -> tuple[jax.Array, jax.Array]:
  """`argmax x_theta` (the largest logit but the mask's; the softmax is monotone, so it is not
  formed) and whether that row has no finite largest logit; `[..., V] -> ([...] int32,
  [...] bool)`."""
  logits = without_mask(logits, mask_id)                               # [..., V] f32
  return (jnp.argmax(logits, axis=-1).astype(jnp.int32),
          ~jnp.isfinite(jnp.max(logits, axis=-1)))


def _final_denoise(denoiser, rule, z, t_final, mask_id):
  """MDLM noise removal: still-masked positions take `argmax x_theta` (no top-p). The
  denoiser is not called at all when no position is still masked; a split denoiser's head
  runs only on the still-masked rows (in rounds of K), a plain one's logits are read whole.

  Returns the tokens `[B, L] int32` and `[B] bool`: a still-masked position had no finite
  largest logit (NaN, +inf or all -inf)."""
  masked = z == mask_id                                                # [B, L]
  output, split = _step_output(denoiser, rule)

  def remove():
    t = jnp.full(z.shape[:1], t_final, jnp.float32)
    computed = output(z, t)
    if split:
      rows_at = _row_reader(denoiser, computed, t, split, rule)
      best, bad = in_rounds(masked, draw_capacity(rule, z.shape[1]),
                            lambda positions: _greedy(rows_at(positions), mask_id))
    else:
      best, bad = _greedy(computed, mask_id)
    return jnp.where(masked, best, z), jnp.any(masked & bad, axis=-1)

  return jax.lax.cond(jnp.any(masked), remove,
                      lambda: (z, jnp.zeros(z.shape[:1], bool)))


def _run(key, denoiser, plan, rule, *, batch_size, seq_len, mask_id, prompt, first_index,
         batch_sharding, record, on_step):
  """The whole run, traceable: `(tokens [B, L] int32, nonfinite [B] bool, records)`, where
  `records` is `(steps, unmasked, remasked)`, each `[n, B, L]`, or None."""
  vocab_size = _vocab_size(denoiser, batch_size, seq_len, mask_id)
  if prompt is None:
    z = jnp.full((batch_size, seq_len), mask_id, jnp.int32)
  else:
    z = _check_prompt(prompt, batch_size, seq_len, vocab_size)
  example_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
      first_index + jnp.arange(batch_size, dtype=jnp.int32))
  psi = jnp.zeros((batch_size, seq_len), jnp.float32)
  if batch_sharding is not None:
    z, psi = jax.lax.with_sharding_constraint((z, psi), batch_sharding)
  fixed = z != mask_id
  cache = None
  if rule.cache:
    out = jax.eval_shape(_step_output(denoiser, rule)[0], z,
                         jnp.zeros((batch_size,), jnp.float32))
    cache = (jnp.zeros(out.shape, out.dtype), jnp.bool_(True))
  step = _make_step(denoiser, plan, rule, example_keys, fixed, mask_id, record, on_step)
  num_steps = plan.table.t.shape[0]
  nonfinite = jnp.zeros((batch_size,), bool)
  (z, _, nonfinite, _), records = jax.lax.scan(
      step, (z, psi, nonfinite, cache), (jnp.arange(num_steps, dtype=jnp.int32), plan.table))
  tokens, final_nonfinite = _final_denoise(denoiser, rule, z, plan.t_final, mask_id)
  return tokens, nonfinite | final_nonfinite, records


def _check_call(denoiser, rule, batch_size, seq_len, mask_id, first_index):
  """The checks that need no tracing; returns the checked `first_index`."""
  _check_sizes(batch_size, seq_len, mask_id)
  if rule.position_chunk and seq_len % rule.position_chunk:
    raise ValueError(f"position_chunk must divide seq_len {seq_len}, got "
                     f"{rule.position_chunk}")
  if rule.cache and getattr(denoiser, "time_conditioned", False):
    raise ValueError("cache=True reuses a step's logits when no token changed, which is exact "
                     "only for a denoiser that ignores t; this denoiser is time-conditioned "
                     "(time_conditioned=True): sample it with cache=False")
  return _check_first_index(first_index)


def _result(tokens, nonfinite, records, plan, first_index, return_trajectory,
            return_nonfinite):
  """The documented return value; raises `NonFiniteLogitsError` unless `return_nonfinite`."""
  if not return_nonfinite:
    if isinstance(nonfinite, jax.core.Tracer):
      jax.debug.callback(_raise_nonfinite, nonfinite, first_index)
    else:
      _raise_nonfinite(nonfinite, first_index)
  if return_trajectory:
    return Trajectory(tokens, *records, plan.table.t, nonfinite)
  return (tokens, nonfinite) if return_nonfinite else tokens


def sample_with_plan(key: jax.Array, denoiser: Denoiser, plan: Plan, rule: StepRule, *,
                     batch_size: int, seq_len: int, mask_id: int,
                     prompt: jax.Array | None = None, first_index=0,
                     batch_sharding: jax.sharding.Sharding | None = None,
                     return_trajectory: bool = False, return_nonfinite: bool = False,
                     on_step: Callable[[jax.Array], None] | None = None):
  """`sample` with a prebuilt plan: pass `plan` as a jit argument to sweep eta, top_p or
  temperature without recompiling. Arguments and results as in `sample`; this function does
  not compile by itself (call it inside `jax.jit`, or use `make_sampler`).

  `on_step(step)`, when given, is called on the host as each step starts (a
  `jax.debug.callback`; progress reporting for jobs, possibly once per device); it does not
  change the tokens.
  """
  first_index = _check_call(denoiser, rule, batch_size, seq_len, mask_id, first_index)
  tokens, nonfinite, records = _run(
      as_typed_key(key), denoiser, plan, rule, batch_size=batch_size, seq_len=seq_len,
      mask_id=mask_id, prompt=prompt, first_index=first_index, batch_sharding=batch_sharding,
      record=return_trajectory, on_step=on_step)
  return _result(tokens, nonfinite, records, plan, first_index, return_trajectory,
                 return_nonfinite)


_STATIC = ("denoiser", "rule", "batch_size", "seq_len", "mask_id", "batch_sharding", "record")
_compiled_run = jax.jit(functools.partial(_run, on_step=None), static_argnames=_STATIC)


def _tracing() -> bool:
  """Whether we are inside a `jit`, `vmap` or other trace (then the caller compiles)."""
  return isinstance(jnp.zeros(()), jax.core.Tracer)


def sample(key: jax.Array, denoiser: Denoiser, config: SamplerConfig, *, batch_size: int,
           seq_len: int, mask_id: int, prompt: jax.Array | None = None, first_index=0,
           batch_sharding: jax.sharding.Sharding | None = None,
           return_trajectory: bool = False, return_nonfinite: bool = False):
  """Samples sequences from a masked diffusion model with MDLM or a ReMDM strategy.

  Starting from all masks (or `prompt`), runs the strategy's steps (paper eq. 6) in one
  `lax.scan`, then one greedy noise-removal call. Called outside any trace, the run is
  compiled once per `(denoiser, config, sizes)` and cached: later calls with the same
  denoiser object and config reuse the executable (the denoiser's parameters are baked in
  as constants; `make_sampler` keeps them an argument). Inside `jax.jit` or `vmap` it is
  traced into the caller's program.

  Args:
    key: `jax.random.key(seed)` or a legacy `jax.random.PRNGKey(seed)`.
    denoiser: `(z [B, L] int32, t [B] float32) -> logits [B, L, V]` (any float dtype; V
      includes `mask_id`; raw logits, SUBS is applied here).
    config: a `SamplerConfig` (static under jit).
    batch_size: B. seq_len: L. mask_id: the mask id, in [0, V).
    prompt: optional `[B, L]`, `[1, L]` or `[L]` int32 template (broadcast to the batch):
      `mask_id` at free positions; the other positions come back unchanged and are never
      remasked (prompts and infilling).
    first_index: global index of this batch's first example (int or traced int32); example
      `i` draws only from `fold_in(key, first_index + i)`.
    batch_sharding: optional sharding of `[B, L]` arrays (e.g. `NamedSharding(mesh,
      P("data"))`) to split the batch over devices inside a jitted call.
    return_trajectory: return a `Trajectory` (tokens after every step, what each step
      unmasked and remasked, the times, the non-finite flags) instead of the tokens.
    return_nonfinite: also return `[B] bool`, True for the examples whose logits were not
      finite where a token was drawn (see Raises), instead of raising.

  Returns:
    `[B, L] int32` tokens, no `mask_id` left; with `return_nonfinite`, `(tokens, flags)`;
    with `return_trajectory`, a `Trajectory`.

  Raises:
    ValueError: bad sizes, key, prompt or denoiser output (before any compilation).
    NonFiniteLogitsError: the denoiser's logits were NaN, +inf, or -inf for every id but the
      mask, at a position where a token was drawn (a broken model would otherwise give
      plausible-looking ids). Under `jit` it is raised from a host callback when the result
      is computed, inside a `JaxRuntimeError` that carries its message. Pass
      `return_nonfinite=True` for per-example flags instead.

  Examples:
    >>> import jax, jax.numpy as jnp, remdm_jax
    >>> def denoiser(z, t):  # uniform over ids 0..3; id 4 is the mask
    ...   return jnp.zeros(z.shape + (5,), jnp.float32)
    >>> cfg = remdm_jax.SamplerConfig(strategy=remdm_jax.Cap(eta=0.1), num_steps=8)
    >>> out = remdm_jax.sample(jax.random.key(0), denoiser, cfg, batch_size=2, seq_len=6,
    ...                        mask_id=4)
    >>> out.shape, out.dtype, bool((out < 4).all())
    ((2, 6), dtype('int32'), True)
  """
  plan, rule = build_plan(config)
  if _tracing():
    return sample_with_plan(key, denoiser, plan, rule, batch_size=batch_size,
                            seq_len=seq_len, mask_id=mask_id, prompt=prompt,
                            first_index=first_index, batch_sharding=batch_sharding,
                            return_trajectory=return_trajectory,
                            return_nonfinite=return_nonfinite)
  first_index = _check_call(denoiser, rule, batch_size, seq_len, mask_id, first_index)
  if prompt is not None:
    prompt = _check_prompt(prompt, batch_size, seq_len,
                           _vocab_size(denoiser, batch_size, seq_len, mask_id))
  tokens, nonfinite, records = _compiled_run(
      as_typed_key(key), denoiser, plan, rule, batch_size=batch_size, seq_len=seq_len,
      mask_id=mask_id, prompt=prompt, first_index=jnp.int32(first_index),
      batch_sharding=batch_sharding, record=return_trajectory)
  return _result(tokens, nonfinite, records, plan, first_index, return_trajectory,
                 return_nonfinite)


def _bind(apply_fn, params) -> Denoiser:
  """`(z, t) -> apply_fn(params, z, t)`, keeping a split contract given with parameters
  (`apply_fn.features(params, z, t)`, `apply_fn.head(params, h, t)`)."""
  denoiser = lambda z, t: apply_fn(params, z, t)
  if is_split(apply_fn):
    denoiser.features = lambda z, t: apply_fn.features(params, z, t)
    denoiser.head = lambda h, t: apply_fn.head(params, h, t)
  return denoiser


class Sampler:
  """A compiled sampler for one model function, config and shape (`make_sampler`).

  `sampler(key, params, prompt=None, *, plan=None, first_index=0)` returns what `sample`
  returns. The parameters, the key, the prompt, the plan (eta, top_p, temperature sweeps)
  and `first_index` are arguments of one jitted function: new values never recompile.
  """

  def __init__(self, apply_fn, config: SamplerConfig, *, batch_size: int, seq_len: int,
               mask_id: int, batch_sharding=None, return_trajectory: bool = False,
               return_nonfinite: bool = False):
    if not callable(apply_fn):
      raise ValueError(f"apply_fn must be a function (params, z [B, L] int32, t [B] float32)"
                       f" -> logits [B, L, V], got {apply_fn!r:.80}")
    self.plan, self.rule = build_plan(config)
    _check_call(apply_fn, self.rule, batch_size, seq_len, mask_id, 0)
    self.apply_fn, self.batch_size, self.seq_len, self.mask_id = (apply_fn, batch_size,
                                                                  seq_len, mask_id)
    self.return_trajectory, self.return_nonfinite = return_trajectory, return_nonfinite

    def run(key, params, plan, prompt, first_index):
      denoiser = _bind(apply_fn, params)
      return _run(key, denoiser, plan, self.rule, batch_size=batch_size, seq_len=seq_len,
                  mask_id=mask_id, prompt=prompt, first_index=first_index,
                  batch_sharding=batch_sharding, record=return_trajectory, on_step=None)

    self._run = jax.jit(run)
    self._vocab_size = None

  def _checked_prompt(self, prompt, params):
    """The prompt as `[B, L] int32`; all masks for None (one signature, one compile)."""
    if prompt is None:
      return jnp.full((self.batch_size, self.seq_len), self.mask_id, jnp.int32)
    if isinstance(prompt, jax.core.Tracer):
      return prompt
    if self._vocab_size is None:
      self._vocab_size = _vocab_size(_bind(self.apply_fn, params), self.batch_size,
                                     self.seq_len, self.mask_id)
    return _check_prompt(prompt, self.batch_size, self.seq_len, self._vocab_size)

  def __call__(self, key, params, prompt=None, *, plan: Plan | None = None, first_index=0):
    first_index = _check_first_index(first_index)
    plan = self.plan if plan is None else plan
    tokens, nonfinite, records = self._run(
        as_typed_key(key), params, plan, self._checked_prompt(prompt, params),
        jnp.asarray(first_index, jnp.int32))
    return _result(tokens, nonfinite, records, plan, first_index, self.return_trajectory,
                   self.return_nonfinite)


def make_sampler(apply_fn, config: SamplerConfig, *, batch_size: int, seq_len: int,
                 mask_id: int, batch_sharding=None, return_trajectory: bool = False,
                 return_nonfinite: bool = False) -> Sampler:
  """The fast path: a sampler compiled once, with the model's parameters as an argument.

  Args:
    apply_fn: `(params, z [B, L] int32, t [B] float32) -> logits [B, L, V]`, e.g. from
      `remdm_jax.models.denoiser_and_params(model)`; with attributes `features(params, z, t)`
      and `head(params, h, t)` it offers the split contract (see `is_split`).
    config, batch_size, seq_len, mask_id, batch_sharding, return_trajectory,
      return_nonfinite: as in `sample`.

  Returns:
    A `Sampler`: `sampler(key, params, prompt=None, *, plan=None, first_index=0)`. The first
    call compiles; calls with new keys, parameters, prompts, plans (from `build_plan` of a
    config with the same static settings) or first indices reuse the executable.

  Examples:
    >>> import jax, jax.numpy as jnp, remdm_jax
    >>> apply = lambda w, z, t: w * jnp.ones(z.shape + (5,), jnp.float32)
    >>> run = remdm_jax.make_sampler(apply, remdm_jax.SamplerConfig(num_steps=4),
    ...                              batch_size=2, seq_len=3, mask_id=4)
    >>> run(jax.random.key(0), jnp.float32(1.0)).shape
    (2, 3)
  """
  return Sampler(apply_fn, config, batch_size=batch_size, seq_len=seq_len, mask_id=mask_id,
                 batch_sharding=batch_sharding, return_trajectory=return_trajectory,
                 return_nonfinite=return_nonfinite)
