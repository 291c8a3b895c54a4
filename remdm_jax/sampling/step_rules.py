"""The per-step rules of the sampler: which positions unmask and remask (eq. 6 coin flips, or
confidence ranking), and the token draws from `x_theta` at the positions that need them.

Every draw of position `p` uses the key `fold_in(token key, p)`, so tokens do not depend on how
positions are grouped (`draw_capacity`, `position_chunk`).

References:
  Wang, Schiff, Sahoo, Kuleshov, "Remasking Discrete Diffusion Models with Inference-Time
  Scaling", NeurIPS 2025, arXiv 2503.00307 (eq. 6; the conf weights, section 4.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from remdm_jax.sampling import posterior
from remdm_jax.diffusion import subs_log_probs, without_mask
from remdm_jax.sampling.rounds import in_rounds
from remdm_jax.sampling.topp import top_p_filter

def conf_weights(psi: jax.Array, decoded: jax.Array, score: str) -> jax.Array:
  """Softmax over decoded positions of `-psi` (paper) or `-log psi`; 0 elsewhere; `[B, L] f32`."""
  logit = -psi if score == "prob" else -jnp.log(psi)
  logit = jnp.where(decoded, logit, -jnp.inf)
  top = jnp.max(logit, axis=-1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  weight = jnp.where(decoded, jnp.exp(logit - top), 0.0)
  return weight / jnp.maximum(jnp.sum(weight, axis=-1, keepdims=True), 1e-30)


def example_keys(key: jax.Array, first_index, batch_size: int) -> jax.Array:
  """`[B]` keys: example `i` of the batch draws only from `fold_in(key, first_index + i)`."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(
      first_index + jnp.arange(batch_size, dtype=jnp.int32))


def row_step_keys(row_keys: jax.Array, step: jax.Array) -> jax.Array:
  """Each row's key of one step, `fold_in(row_keys[b], step)`: `[B]` keys -> `[B]` keys (what
  a decoder's `Scan.step` receives)."""
  return jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)


def step_keys(keys: jax.Array) -> jax.Array:
  """A step's row keys `[B]` (`row_step_keys`) split by purpose: `[B, 3]` (remask, unmask /
  score, token)."""
  return jax.vmap(lambda k: jax.random.split(k, 3))(keys)


def select_bernoulli(keys, row, rule, z, fixed, mask_id, psi):
  """Per-token coin flips of eq. 6; returns `(unmask, remask)`, both `[B, L] bool`. They
  depend on the table row, the carry and the keys only, not on `x_theta`."""
  masked = z == mask_id
  decoded = ~masked & ~fixed
  sigma = jnp.broadcast_to(row.sigma, z.shape)
  if rule.conf_score is not None:
    sigma = sigma * conf_weights(psi, decoded, rule.conf_score)
  p_remask, p_unmask = posterior.transition_probs(row, sigma)
  remask = decoded & jax.vmap(posterior.bernoulli)(keys[:, 0], p_remask)
  unmask = masked & jax.vmap(posterior.bernoulli)(keys[:, 1], p_unmask)
  return unmask, remask


def top_count(score: jax.Array, count: jax.Array) -> jax.Array:
  """Marks the `count[b]` highest scores of each row; `[B, L] f32, [B] int32 -> [B, L] bool`."""
  rank = jnp.argsort(jnp.argsort(-score, axis=-1), axis=-1)        # [B, L]
  return rank < count[:, None]


def select_rank(keys, row, z, fixed, mask_id, psi, token_prob):
  """Confidence decoding: remask the least confident decoded tokens, unmask the most confident.

  The decoded count after the step is `round(decoded_frac * free positions)` per example.
  """
  del keys
  masked = z == mask_id
  decoded = ~masked & ~fixed
  n_free = jnp.sum(~fixed, axis=-1)
  n_decoded = jnp.sum(decoded, axis=-1)
  n_remask = jnp.minimum(row.remask_count, n_decoded)
  remask = decoded & top_count(jnp.where(decoded, -psi, -jnp.inf), n_remask)
  target = jnp.round(row.decoded_frac * n_free).astype(jnp.int32)
  n_unmask = jnp.clip(target - (n_decoded - n_remask), 0, jnp.sum(masked, axis=-1))
  unmask = masked & top_count(jnp.where(masked, token_prob, -jnp.inf), n_unmask)
  return unmask, remask


def tempered_probs(logits: jax.Array, mask_id: int,
                   temperature) -> tuple[jax.Array, jax.Array]:
  """SUBS probabilities of `logits [..., V]` divided by `temperature`, `[..., V] float32`,
  and where they are not a distribution (a NaN or +inf logit, or -inf for every id but the
  mask), `[...] bool`."""
  log_probs = subs_log_probs(logits, mask_id, temperature)        # [..., V] f32
  return jnp.exp(log_probs), ~jnp.isfinite(jnp.max(log_probs, axis=-1))


def _x_theta(logits: jax.Array, plan, rule,
             mask_id: int) -> tuple[jax.Array, jax.Array]:
  """`tempered_probs` after top-p (`plan`, a `Plan`, and its `StepRule`): `[B, L, V]
  float32` and `[B, L] bool`."""
  probs, nonfinite = tempered_probs(logits, mask_id, plan.temperature)
  if rule.use_top_p:
    probs = top_p_filter(probs, plan.top_p, mode=rule.top_p_mode, impl=rule.top_p_impl)
  return probs, nonfinite


def position_keys(keys: jax.Array, positions: jax.Array) -> jax.Array:
  """`fold_in(keys[b], positions[b, c])`: `[B]` keys, `[B, C]` int32 -> `[B, C]` keys."""
  return jax.vmap(lambda k, ps: jax.vmap(lambda p: jax.random.fold_in(k, p))(ps))(keys,
                                                                                  positions)


def draw_at(token_keys: jax.Array, probs: jax.Array,
            positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One draw per row of `probs [B, C, V]`, the row of position `positions[b, c]` drawn with
  key `fold_in(token_keys[b], positions[b, c])`: `(ids [B, C] int32, prob [B, C] f32)`."""
  return jax.vmap(jax.vmap(posterior.draw_categorical))(position_keys(token_keys, positions),
                                                        probs)


def token_logp(logits: jax.Array, ids: jax.Array, mask_id: int) -> jax.Array:
  """The model's own log-probability of `ids`: SUBS at temperature 1, no top-p;
  `[..., V], [...] int32 -> [...] float32`."""
  log_probs = subs_log_probs(logits, mask_id)
  return jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]


def _draw_positions(token_keys, logits, positions, plan, rule, mask_id, with_logp=False):
  """x_theta and one draw for each row of `logits [B, C, V]` (`draw_at`).

  Returns `(ids [B, C] int32, prob [B, C] f32, nonfinite [B, C] bool)`, and with
  `with_logp` the ids' `token_logp [B, C] f32` after them."""
  probs, nonfinite = _x_theta(logits, plan, rule, mask_id)                     # [B, C, V]
  ids, prob = draw_at(token_keys, probs, positions)
  if with_logp:
    return ids, prob, nonfinite, token_logp(logits, ids, mask_id)
  return ids, prob, nonfinite


def draw_all(token_keys, logits, plan, rule, mask_id, with_logp=False):
  """Draws for every position (the rank rule needs them all); with `rule.position_chunk = C`
  for C positions at a time, so only `[B, C, V]` temporaries are live. Returns as
  `_draw_positions` over `[B, L]`."""
  batch, length = logits.shape[:2]
  chunk = rule.position_chunk or length

  def part(start, logits_part):
    positions = jnp.broadcast_to(start + jnp.arange(chunk, dtype=jnp.int32), (batch, chunk))
    return _draw_positions(token_keys, logits_part, positions, plan, rule, mask_id, with_logp)

  if chunk == length:
    return part(0, logits)

  def body(index, out):
    start = index * chunk
    new = part(start, jax.lax.dynamic_slice_in_dim(logits, start, chunk, axis=1))
    return tuple(jax.lax.dynamic_update_slice_in_dim(whole, piece, start, axis=1)
                 for whole, piece in zip(out, new))

  init = (jnp.zeros((batch, length), jnp.int32), jnp.zeros((batch, length), jnp.float32),
          jnp.zeros((batch, length), bool)) + ((jnp.zeros((batch, length), jnp.float32),)
                                               if with_logp else ())
  return jax.lax.fori_loop(0, length // chunk, body, init)


def draw_capacity(rule, seq_len: int) -> int:
  """K, the positions per example drawn in one round: `rule.draw_capacity` if set, else the
  largest expected number of MDLM unmaskings in a step, `L * max(alpha_s - alpha_t)`, plus a
  binomial margin (4 sd + 8). Steps that unmask more (remasking strategies re-unmask) take
  further rounds; the tokens do not depend on K."""
  if rule.draw_capacity:
    return min(rule.draw_capacity, seq_len)
  mean = seq_len * rule.unmask_fraction
  return min(seq_len, int(np.ceil(mean + 4.0 * np.sqrt(mean) + 8.0)))


def draw_selected(token_keys, rows_at, selected, capacity, plan, rule, mask_id,
                  with_logp=False):
  """Draws only at `selected [B, L]` positions, `rows_at(positions [B, K]) -> logits
  [B, K, V]` giving their rows, with the same per-position keys as `draw_all`.

  Returns `(ids [B, L] int32, prob [B, L] f32, nonfinite [B, L] bool)` (and `token_logp`
  with `with_logp`), meaningful where `selected` (0, 0 and False elsewhere)."""
  compute = lambda positions: _draw_positions(token_keys, rows_at(positions), positions, plan,
                                              rule, mask_id, with_logp)
  return in_rounds(selected, capacity, compute)


def greedy(logits: jax.Array, mask_id: int) -> tuple[jax.Array, jax.Array]:
  """`argmax x_theta` (the largest logit but the mask's; the softmax is monotone, so it is not
  formed) and whether that row has no finite largest logit; `[..., V] -> ([...] int32,
  [...] bool)`."""
  logits = without_mask(logits, mask_id)                               # [..., V] f32
  return (jnp.argmax(logits, axis=-1).astype(jnp.int32),
          ~jnp.isfinite(jnp.max(logits, axis=-1)))
