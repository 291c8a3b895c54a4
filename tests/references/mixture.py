"""A known distribution for the sampler tests: a mixture of a few fixed sequences over ids
0..3 (id 4 is the mask), its exact denoiser, the total variation of samples to it, and the
per-step remasking and unmasking probabilities written out in float64 from the papers'
formulas (independent of `remdm_jax.sampling.strategies`)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

# A known distribution: a mixture of a few fixed sequences over ids 0..3; id 4 is the mask.
MIXTURE_SEQS = np.array([[0, 1, 2, 3, 0, 1],
                         [1, 1, 0, 0, 2, 2],
                         [3, 2, 1, 0, 3, 2],
                         [2, 0, 3, 1, 1, 3]], dtype=np.int32)
MIXTURE_WEIGHTS = np.array([0.4, 0.3, 0.2, 0.1])
MASK_ID = 4


def oracle_denoiser(seqs: np.ndarray, weights: np.ndarray, vocab_size: int):
  """Exact x_theta for a mixture of sequences: the posterior over the sequences that agree
  with every decoded position, marginalised per position. Returns log-probabilities.

  Where no sequence agrees (the sample already left the support), the prior stands in, so
  the logits stay finite."""
  seqs_j = jnp.asarray(seqs)                                       # [K, L]
  log_w = jnp.log(jnp.asarray(weights, jnp.float32))               # [K]
  onehot = jax.nn.one_hot(seqs_j, vocab_size, dtype=jnp.float32)  # [K, L, V]
  mask_id = vocab_size - 1

  def denoiser(z, t):
    del t
    agree = (z[:, None, :] == seqs_j[None]) | (z[:, None, :] == mask_id)   # [B, K, L]
    consistent = jnp.all(agree, axis=-1)                                      # [B, K]
    consistent |= ~jnp.any(consistent, axis=-1, keepdims=True)
    post = jax.nn.softmax(jnp.where(consistent, log_w, -jnp.inf), axis=-1)   # [B, K]
    probs = jnp.einsum("bk,klv->blv", post, onehot)                           # [B, L, V]
    return jnp.log(probs)

  from remdm_jax import Denoiser   # after XLA_FLAGS is set
  return Denoiser.wrap(denoiser, reads_t=False, vocab_size=vocab_size)


def tv_to_mixture(samples: np.ndarray) -> float:
  """Total variation between the samples' empirical distribution and the mixture."""
  counts = {}
  for row in map(tuple, np.asarray(samples)):
    counts[row] = counts.get(row, 0) + 1
  n = len(samples)
  target = {tuple(s): w for s, w in zip(MIXTURE_SEQS, MIXTURE_WEIGHTS)}
  keys = set(counts) | set(target)
  return 0.5 * sum(abs(counts.get(k, 0) / n - target.get(k, 0.0)) for k in keys)


def all_sequences(vocab: int, length: int):
  return np.array(list(itertools.product(range(vocab), repeat=length)), dtype=np.int32)


def dfm_grid_reference(num_steps, t_min=1e-5, scale=10.0, power=0.25):
  """The adaptive DFM grid written out directly (float64)."""
  ts = [1.0]
  while ts[-1] > t_min:
    t = ts[-1]
    beta = scale * t ** power * (1.0 - t) ** power
    rate = (1.0 + beta) / t + (beta / (1.0 - t) if t < 1.0 else 0.0)
    ts.append(max(t - min(1.0 / num_steps, 1.0 / rate), t_min))
  return np.array(ts)


def direct_step_probs(cfg):
  """Per-step (p_remask, p_unmask) written out from the paper's formulas, float64, for the
  strategies with alpha = 1 - t (loop: its own alpha); independent of `remdm_jax.sampling.strategies`.
  For conf (and loop with `conf`), p_remask is the base sigma (before the confidence weights)
  and p_unmask the value for that sigma; loop's phase-2 sigma follows its `base`."""
  name, st = cfg.strategy.name, cfg.strategy
  if name == "dfm":
    grid = dfm_grid_reference(cfg.num_steps, cfg.t_min, st.beta_scale, st.beta_power)
  else:
    grid = np.linspace(1.0, cfg.t_min, cfg.num_steps + 1)
  t, s = grid[:-1], grid[1:]
  a_t, a_s = 1.0 - t, 1.0 - s
  with np.errstate(divide="ignore", invalid="ignore"):
    smax = np.where(a_t > 0, np.minimum(1.0, s / (1.0 - t)), 1.0)   # (1 - a_s) / a_t
    if name in ("mdlm", "topk"):
      sigma = np.zeros_like(t)
    elif name == "cap":
      sigma = np.minimum(st.eta, smax)
    elif name == "rescale":
      sigma = st.eta * smax
    elif name == "conf":
      sigma = {"max": smax, "cap": np.minimum(st.eta, smax), "rescale": st.eta * smax}[st.base]
    elif name == "fb":
      sigma = np.where(a_t > 0, np.minimum((a_s - a_t) / a_t, smax), 1.0)
    elif name == "dfm":
      beta = st.beta_scale * t ** st.beta_power * (1.0 - t) ** st.beta_power
      sigma = np.where(a_t > 0, np.minimum(beta * (a_s - a_t) / a_t, smax), 1.0)
    elif name == "loop":
      def alpha(x):
        return np.where(x > st.t_on, st.alpha_on * (1 - x) / (1 - st.t_on),
                        np.where(x > st.t_off, st.alpha_on,
                                 1 - (1 - st.alpha_on) * x / st.t_off))
      a_t, a_s = alpha(t), alpha(s)
      smax = np.minimum(1.0, (1.0 - a_s) / a_t)
      phase2 = {"constant": st.eta, "cap": np.minimum(st.eta, smax),
                "rescale": st.eta * smax}[st.base]
      sigma = np.where((t <= st.t_on) & (s >= st.t_off), phase2, 0.0)
    else:
      raise ValueError(name)
  return sigma, (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t)
