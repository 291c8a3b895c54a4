"""LLaDA: a bidirectional Llama-style masked diffusion language model, in Flax NNX.

Nie et al., "Large Language Diffusion Models", 2025, arXiv 2502.09992 (released as
GSAI-ML/LLaDA-8B-Base and -Instruct). Each block is pre-norm: RMSNorm (`w * x`, statistics in
float32) -> separate q, k, v projections -> rotary embedding (rotate-half: dimension `i` is
paired with `i + Dh/2`, base `rope_theta`, applied in float32) -> attention over every
position (no causal mask, scale `1/sqrt(Dh)`, `n_kv_heads <= n_heads` for grouped-query
attention) -> output projection, residual; then RMSNorm -> `SiLU(ff_proj(x)) * up_proj(x)` ->
`ff_out`, residual. A final RMSNorm `ln_f` and the output projection `ff_out` (or the
transposed embedding with `weight_tying`) give the logits. There are no biases and no time
input. Attribute names follow the released keys (`blocks.{i}.q_proj`, `ln_f`, ...), so the
import in `llada_io.py` is a rename and a transpose. Loading weights lives there, not here.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from remdm_jax.denoiser import Denoiser
from remdm_jax.validation import ArgumentTypeError, check_choice, check_fields, check_range

DTYPES = ("float32", "bfloat16", "float16")

# Reference settings this implementation covers: config.json field -> (the reference's
# default when the field is absent, the values supported here). Anything else is refused.
_SUPPORTED = {
    "block_type": ("sequential", ("llama",)),
    "layer_norm_type": ("default", ("rms",)),
    "activation_type": ("swiglu", ("silu",)),
    "rope": (False, (True,)),
    "rope_full_precision": (True, (True,)),
    "alibi": (False, (False,)),
    "attention_layer_norm": (False, (False,)),
    "include_bias": (False, (False,)),
    "include_qkv_bias": (False, (False, None)),
    "bias_for_layer_norm": (None, (False, None)),
    "layer_norm_with_affine": (True, (True,)),
    "input_emb_norm": (False, (False,)),
    "block_group_size": (1, (1,)),
}


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
  """Sizes of a LLaDA model; the defaults are the released LLaDA-8B (Base and Instruct)."""

  vocab_size: int = 126_464          # V: embedding rows and logits width (the release's
                                     # embedding_size), including the mask id
  d_model: int = 4_096               # D
  n_layers: int = 32
  n_heads: int = 32                  # H; head width Dh = D / H = 128
  n_kv_heads: int = 32               # key/value heads; < n_heads: grouped-query attention
  mlp_hidden_size: int = 12_288      # M, width of ff_proj / up_proj
  rope_theta: float = 500_000.0      # rotary base
  rms_norm_eps: float = 1e-5         # added to the mean square in every RMSNorm
  max_sequence_length: int = 4_096   # longest input accepted (the trained context)
  weight_tying: bool = False         # True: logits from the embedding, no output ff_out
  scale_logits: bool = False         # True: logits times 1/sqrt(D)
  mask_id: int = 126_336             # the id of the mask token (<|mdm_mask|>)
  param_dtype: str = "bfloat16"      # storage dtype of the parameters (the release's)
  dtype: str = "bfloat16"            # compute dtype of the trunk; norms, rotary, logits f32

  def __post_init__(self):
    check_fields(self)
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads",
                 "mlp_hidden_size", "max_sequence_length"):
      check_range(name, getattr(self, name), 1)
    check_range("rope_theta", self.rope_theta, 0.0, low_open=True)
    check_range("rms_norm_eps", self.rms_norm_eps, 0.0, low_open=True)
    if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
      raise ValueError(f"d_model / n_heads must be an even integer, got d_model="
                       f"{self.d_model}, n_heads={self.n_heads}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_kv_heads must divide n_heads={self.n_heads}, got "
                       f"{self.n_kv_heads}")
    check_range("mask_id", self.mask_id, 0, self.vocab_size, high_open=True,
                context=" (the vocabulary)")
    check_choice("param_dtype", self.param_dtype, DTYPES)
    check_choice("dtype", self.dtype, DTYPES)

  def to_hf(self) -> dict:
    """The released `config.json` fields of this config (`from_hf(cfg.to_hf())` gives it
    back): what `remdm_jax.weights.llada_io.save_llada` writes."""
    return {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": self.d_model,
            "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
            "mlp_hidden_size": self.mlp_hidden_size, "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps, "max_sequence_length": self.max_sequence_length,
            "weight_tying": self.weight_tying, "scale_logits": self.scale_logits,
            "vocab_size": self.vocab_size, "embedding_size": self.vocab_size,
            "mask_token_id": self.mask_id, "torch_dtype": self.param_dtype,
            "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
            "rope": True, "include_bias": False}

  @property
  def head_dim(self) -> int:
    """Dh = D / H."""
    return self.d_model // self.n_heads

  @classmethod
  def from_hf(cls, config: dict, *, dtype: str | None = None) -> "LLaDAConfig":
    """The config of a released `config.json` (already parsed), in its field names.

    `d_model`, `n_layers`, `n_heads`, `vocab_size` and `mask_token_id` are required (the
    reference default mask id, 50256, is not a released LLaDA's, so it is never assumed);
    other fields take the reference code's defaults when absent (`n_kv_heads`: `n_heads`, or 1 with
    `multi_query_attention`; `mlp_hidden_size`: `mlp_ratio * d_model`; `embedding_size`:
    50304 when absent, `vocab_size` when null). `dtype` sets both `param_dtype` and `dtype`;
    None: the file's `torch_dtype` (or `dtype`, as newer writers name it) when it names one
    of `DTYPES`, else float32.

    Raises:
      ValueError: a required field is missing, `vocab_size` exceeds `embedding_size`, or a
        field asks for a variant this implementation does not cover (e.g. `block_type` other
        than "llama", biases, qk-norm, ALiBi), named with its value and the supported ones.
    """
    if not isinstance(config, dict):
      raise ArgumentTypeError(f"config must be the dict of a config.json, got "
                              f"{type(config).__name__}")
    missing = [k for k in ("d_model", "n_layers", "n_heads", "vocab_size") if k not in config]
    if missing:
      raise ValueError(f"config.json lacks the field(s) {missing}")
    for name, (default, allowed) in _SUPPORTED.items():
      value = config.get(name, default)
      if value not in allowed:
        raise ValueError(f"config.json {name}={value!r} is not supported; LLaDA here needs "
                         f"{name} in {list(allowed)}")
    value = lambda name, default: default if config.get(name) is None else config[name]
    n_heads = config["n_heads"]
    n_kv_heads = value("n_kv_heads", 1 if config.get("multi_query_attention") else n_heads)
    if config.get("mask_token_id") is None:
      raise ValueError("config.json has no mask_token_id (absent or null); the reference "
                       "code's default 50256 is not the mask of a released LLaDA (126336), "
                       "so it is not assumed: set mask_token_id")
    embedding_size = config.get("embedding_size", 50_304) or config["vocab_size"]
    sizes = (config["vocab_size"], embedding_size)
    if all(isinstance(n, int) for n in sizes) and sizes[0] > sizes[1]:   # types: check_fields
      shown = embedding_size if "embedding_size" in config else "absent, the default 50304"
      raise ValueError(f"config.json vocab_size={config['vocab_size']} is larger than "
                       f"embedding_size={shown}: the embedding needs a row for every token")
    if dtype is None:
      stored = config.get("torch_dtype", config.get("dtype"))
      dtype = stored if stored in DTYPES else "float32"
    return cls(
        vocab_size=embedding_size,
        d_model=config["d_model"],
        n_layers=config["n_layers"], n_heads=n_heads, n_kv_heads=n_kv_heads,
        mlp_hidden_size=value("mlp_hidden_size", value("mlp_ratio", 4) * config["d_model"]),
        rope_theta=value("rope_theta", 10_000.0), rms_norm_eps=value("rms_norm_eps", 1e-5),
        max_sequence_length=value("max_sequence_length", 1_024),
        weight_tying=value("weight_tying", True), scale_logits=value("scale_logits", False),
        mask_id=config["mask_token_id"], param_dtype=dtype, dtype=dtype)


def rotary_tables(length: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """`(cos, sin)`, each `[L, Dh] float32`: angle `p * theta^(-2k/Dh)` at position `p` for
  dimensions `k` and `k + Dh/2` (the rotate-half pairing)."""
  return rotary_at(jnp.arange(length, dtype=jnp.int32), head_dim, theta)


def rotary_at(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """`rotary_tables` at given positions: `positions [...] int32 -> (cos, sin)`, each
  `[..., Dh] float32`, equal bit for bit to the tables' rows at those positions."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq.reshape(
      (1,) * positions.ndim + (-1,))                                         # [..., Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)                         # [..., Dh]
  return jnp.cos(angles), jnp.sin(angles)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding in float32; `x [B, L, N, Dh]` with `cos, sin` of `[L, Dh]` (shared by
  the batch) or `[B, L, Dh]` (per example) -> `x`'s shape and dtype."""
  x32 = x.astype(jnp.float32)
  first, second = jnp.split(x32, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)                       # [B, L, N, Dh]
  cos, sin = (jnp.broadcast_to(c, x.shape[:2] + c.shape[-1:])[:, :, None, :]
              for c in (cos, sin))                                           # [B, L, 1, Dh]
  return (x32 * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nnx.Module):
  """`weight * (x / sqrt(mean(x^2) + eps))`, the statistics in float32 and the result in
  `x`'s dtype; `[..., D] -> [..., D]`."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    weight = self.weight[...].astype(x.dtype)[(None,) * (x.ndim - 1)]      # [1, .., 1, D]
    return weight * normed.astype(x.dtype)


def _linear(cin: int, cout: int, cfg: LLaDAConfig, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(cin, cout, use_bias=False, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype),
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class Block(nnx.Module):
  """One LLaDA block (Llama layout, bidirectional attention); `[B, L, D] -> [B, L, D]`."""

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs):
    d, kv, m = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.mlp_hidden_size
    self.heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    self.attn_norm = RMSNorm(d, cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype))
    self.q_proj = _linear(d, d, cfg, rngs)
    self.k_proj = _linear(d, kv, cfg, rngs)
    self.v_proj = _linear(d, kv, cfg, rngs)
    self.attn_out = _linear(d, d, cfg, rngs)
    self.ff_norm = RMSNorm(d, cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype))
    self.ff_proj = _linear(d, m, cfg, rngs)
    self.up_proj = _linear(d, m, cfg, rngs)
    self.ff_out = _linear(m, d, cfg, rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    return self.with_kv(x, cos, sin)[0]

  def with_kv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
    """The block and its keys and values: `x [B, L, D] -> (x' [B, L, D], (k, v))`, `k, v`
    `[B, L, Hkv, Dh]` in `x`'s dtype (k after rotary)."""
    q, k, v = self._qkv(x, cos, sin)
    return self._finish(x, q, k, v), (k, v)

  def cached(self, x: jax.Array, cos: jax.Array, sin: jax.Array, positions: jax.Array,
             fresh: jax.Array, kv) -> jax.Array:
    """The rows `x [B, W, D]` at `positions [B, W] int32` (`cos, sin [B, W, Dh]`), attending
    to the cached `kv` (`k, v [B, L, Hkv, Dh]`) with the `fresh [B, W] bool` rows' entries
    replaced by their new keys and values; `-> [B, W, D]`."""
    q, k, v = self._qkv(x, cos, sin)
    return self._finish(x, q, *_with_fresh(kv, k, v, positions, fresh))

  def prefill_and_cached(self, x_p, x_w, rotary, positions, fresh, kv):
    """`with_kv` of the rows `x_p [R, L, D]` and `cached` of the rows `x_w [B, W, D]` (at
    `positions`, with `fresh` and `kv` as in `cached`) in one pass: the projections and the
    MLP run once over both groups' tokens, the attention apart. `rotary` is the joined
    `(cos, sin)`, each `[1, R L + B W, Dh]` (`join_groups`). Returns `(x_p' [R, L, D],
    (k, v) [R, L, Hkv, Dh], x_w' [B, W, D])`."""
    shape_p = x_p.shape[:2]
    q, k, v = self._qkv(join_groups(x_p, x_w), *rotary)
    (q_p, q_w), (k_p, k_w), (v_p, v_w) = (split_groups(a, shape_p, x_w.shape[:2])
                                          for a in (q, k, v))
    att = join_groups(_attention(q_p, k_p, v_p),
                      _attention(q_w, *_with_fresh(kv, k_w, v_w, positions, fresh)))
    x_p, x_w = split_groups(self._mlp(join_groups(x_p, x_w), att), shape_p, x_w.shape[:2])
    return x_p, (k_p, v_p), x_w

  def _qkv(self, x, cos, sin):
    b, l, _ = x.shape
    h = self.attn_norm(x)
    q = _rotate(self.q_proj(h).reshape(b, l, self.heads, self.head_dim), cos, sin)
    k = _rotate(self.k_proj(h).reshape(b, l, self.kv_heads, self.head_dim), cos, sin)
    v = self.v_proj(h).reshape(b, l, self.kv_heads, self.head_dim)         # [B, L, Hkv, Dh]
    return q, k, v

  def _finish(self, x, q, k, v):
    """Attention of `q [B, W, H, Dh]` over `k, v [B, L, Hkv, Dh]`, then the MLP."""
    return self._mlp(x, _attention(q, k, v))

  def _mlp(self, x, att):
    """The attention's output projection `att [B, W, H, Dh]`, added to `x [B, W, D]`, then
    the MLP with its residual."""
    b, w, d = x.shape
    x = x + self.attn_out(att.reshape(b, w, d))
    h = self.ff_norm(x)
    return x + self.ff_out(jax.nn.silu(self.ff_proj(h)) * self.up_proj(h))


def _attention(q, k, v):
  """`q [B, W, H, Dh]` over `k, v [B, L, Hkv, Dh]`: query head n reads key/value head
  n // (H / Hkv), as the reference's repeat_interleave."""
  return jax.nn.dot_product_attention(q, k, v)                             # [B, W, H, Dh]


def _with_fresh(kv, k, v, positions, fresh):
  """The cached `kv` (`k, v [B, L, Hkv, Dh]`) with the `fresh [B, W] bool` rows at
  `positions [B, W]` replaced by `k, v [B, W, Hkv, Dh]`."""
  rows = jnp.arange(k.shape[0])[:, None]
  at = jnp.where(fresh, positions, kv[0].shape[1])         # out of range: dropped
  return kv[0].at[rows, at].set(k, mode="drop"), kv[1].at[rows, at].set(v, mode="drop")


def join_groups(a: jax.Array, b: jax.Array) -> jax.Array:
  """Two groups of rows, `a [R, L, ...]` and `b [B, W, ...]`, as one row of their `R L + B W`
  tokens, `[1, R L + B W, ...]`: position-wise layers then run once over both."""
  flat = lambda x: x.reshape((1, -1) + x.shape[2:])
  return jnp.concatenate([flat(a), flat(b)], axis=1)


def split_groups(joined: jax.Array, shape_a, shape_b) -> tuple[jax.Array, jax.Array]:
  """The inverse of `join_groups`: `[1, R L + B W, ...] -> ([R, L, ...], [B, W, ...])`."""
  n = shape_a[0] * shape_a[1]
  rest = joined.shape[2:]
  return (joined[0, :n].reshape(tuple(shape_a) + rest),
          joined[0, n:].reshape(tuple(shape_b) + rest))


class LLaDA(nnx.Module):
  """`model(tokens [B, L] int32) -> logits [B, L, V] float32`; no time input.

  `features` is the trunk with the final norm (`[B, L, D]` in `cfg.dtype`) and `project`
  the position-wise output layer, so `model(z) == model.project(model.features(z))`.
  """

  def __init__(self, cfg: LLaDAConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                         param_dtype=jnp.dtype(cfg.param_dtype),
                         embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps, jnp.dtype(cfg.param_dtype))
    self.ff_out = None if cfg.weight_tying else _linear(cfg.d_model, cfg.vocab_size, cfg, rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Logits `[B, L, V] float32` of `tokens [B, L] int32` (the mask id where masked)."""
    return self.project(self.features(tokens))

  def features(self, tokens: jax.Array) -> jax.Array:
    """Final hidden states after `ln_f`: `tokens [B, L] int32 -> h [B, L, D]` (cfg.dtype).

    Raises:
      ValueError: tokens are not a `[B, L]` integer array, or `L > max_sequence_length`.
    """
    return self.features_with_cache(tokens)[0]

  def features_with_cache(self, tokens: jax.Array):
    """`features` and every layer's keys and values: `(h [B, L, D], cache)`, the cache a
    tuple over layers of `(k, v)`, each `[B, L, Hkv, Dh]` (k after rotary)."""
    self._check_tokens(tokens)
    cos, sin = rotary_tables(tokens.shape[1], self.cfg.head_dim, self.cfg.rope_theta)
    x = self.wte(tokens).astype(jnp.dtype(self.cfg.dtype))                 # [B, L, D]
    cache = []
    for block in self.blocks:
      x, kv = block.with_kv(x, cos, sin)
      cache.append(kv)
    return self.ln_f(x), tuple(cache)

  def features_cached(self, tokens: jax.Array, positions: jax.Array, fresh: jax.Array,
                      cache) -> jax.Array:
    """The hidden states of the rows `tokens [B, W] int32` standing at `positions [B, W]
    int32`, each layer attending to `cache` (from `features_with_cache` of the whole
    sequence) with the `fresh [B, W] bool` rows' keys and values replaced by their new
    ones: `h [B, W, D]`. With every row of the sequence fresh this is `features`; with some
    rows cached it is the approximation of Fast-dLLM's prefix and dual caches."""
    self._check_tokens(tokens)
    cos, sin = rotary_at(positions, self.cfg.head_dim, self.cfg.rope_theta)  # [B, W, Dh]
    x = self.wte(tokens).astype(jnp.dtype(self.cfg.dtype))                 # [B, W, D]
    for block, kv in zip(self.blocks, cache):
      x = block.cached(x, cos, sin, positions, fresh, kv)
    return self.ln_f(x)

  def features_prefill_and_cached(self, tokens_p: jax.Array, tokens_w: jax.Array,
                                  positions: jax.Array, fresh: jax.Array, cache):
    """`features_with_cache` of the rows `tokens_p [R, L] int32` and `features_cached` of the
    rows `tokens_w [B, W] int32` (with `positions`, `fresh` and `cache` as there) in one pass
    over the layers (`Block.prefill_and_cached`): `((h_p [R, L, D], cache_p), h_w [B, W,
    D])`, the two calls' values to float32 rounding (the matrix products see other shapes,
    as under another batch size)."""
    self._check_tokens(tokens_p)
    self._check_tokens(tokens_w)
    r, l = tokens_p.shape
    rotary_p = rotary_at(jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (r, l)),
                         self.cfg.head_dim, self.cfg.rope_theta)           # [R, L, Dh]
    rotary_w = rotary_at(positions, self.cfg.head_dim, self.cfg.rope_theta)  # [B, W, Dh]
    rotary = tuple(join_groups(a, b) for a, b in zip(rotary_p, rotary_w))
    dtype = jnp.dtype(self.cfg.dtype)
    x_p, x_w = self.wte(tokens_p).astype(dtype), self.wte(tokens_w).astype(dtype)
    fresh_cache = []
    for block, kv in zip(self.blocks, cache):
      x_p, kv_p, x_w = block.prefill_and_cached(x_p, x_w, rotary, positions, fresh, kv)
      fresh_cache.append(kv_p)
    return (self.ln_f(x_p), tuple(fresh_cache)), self.ln_f(x_w)

  def _check_tokens(self, tokens: jax.Array) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be [B, L] integer ids, got {tokens.dtype}"
                       f"{list(tokens.shape)}")
    if tokens.shape[1] > self.cfg.max_sequence_length:
      raise ValueError(f"sequence length must be <= max_sequence_length="
                       f"{self.cfg.max_sequence_length}, got {tokens.shape[1]}")

  def project(self, h: jax.Array) -> jax.Array:
    """The output layer: `h [..., D] -> logits [..., V] float32` (the matmul in cfg.dtype,
    accumulated in float32)."""
    dtype = jnp.dtype(self.cfg.dtype)
    if self.ff_out is None:   # weight tying: the embedding, [V, D]
      logits = jnp.einsum("...d,vd->...v", h.astype(dtype),
                          self.wte.embedding[...].astype(dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum("...d,dv->...v", h.astype(dtype),
                          self.ff_out.kernel[...].astype(dtype),
                          preferred_element_type=jnp.float32)
    if self.cfg.scale_logits:
      logits = logits * (1.0 / math.sqrt(self.cfg.d_model))
    return logits


@dataclasses.dataclass(frozen=True)
class _LLaDAFeatures:
  """`(state, z [B, L] int32, t) -> h [B, L, D]`: the trunk with `ln_f` (`t` is not read).
  Equal settings compare equal (as do the other parts), so samplers built from two
  `as_denoiser` calls share one executable."""

  graphdef: nnx.GraphDef

  def __call__(self, state, z: jax.Array, t: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, state).features(z)                   # [B, L, D]


@dataclasses.dataclass(frozen=True)
class _LLaDAHead:
  """`(state, h [B, K, D], t) -> logits [B, K, V]` float32: the output projection."""

  graphdef: nnx.GraphDef

  def __call__(self, state, h: jax.Array, t: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, state).project(h)                    # [B, K, V]


@dataclasses.dataclass(frozen=True)
class _LLaDALogits:
  """`(state, z [B, L] int32, t) -> logits [B, L, V]` float32: the trunk, then the head."""

  graphdef: nnx.GraphDef

  def __call__(self, state, z: jax.Array, t: jax.Array) -> jax.Array:
    model = nnx.merge(self.graphdef, state)
    return model.project(model.features(z))                              # [B, L, V]


@dataclasses.dataclass(frozen=True)
class _LLaDAPrefill:
  """`(state, z [B, L] int32) -> (h [B, L, D], cache)`: the key-value cache contract's
  first part (`LLaDA.features_with_cache`)."""

  graphdef: nnx.GraphDef

  def __call__(self, state, z: jax.Array):
    return nnx.merge(self.graphdef, state).features_with_cache(z)


@dataclasses.dataclass(frozen=True)
class _LLaDACached:
  """`(state, z_w, positions, fresh, cache) -> h [B, W, D]` (`LLaDA.features_cached`)."""

  graphdef: nnx.GraphDef

  def __call__(self, state, z_w, positions, fresh, cache) -> jax.Array:
    return nnx.merge(self.graphdef, state).features_cached(z_w, positions, fresh, cache)


@dataclasses.dataclass(frozen=True)
class _LLaDAPrefillAndCached:
  """`(state, z_p, z_w, positions, fresh, cache) -> ((h_p, cache_p), h_w)`
  (`LLaDA.features_prefill_and_cached`)."""

  graphdef: nnx.GraphDef

  def __call__(self, state, z_p, z_w, positions, fresh, cache):
    return nnx.merge(self.graphdef, state).features_prefill_and_cached(z_p, z_w, positions,
                                                                       fresh, cache)


def as_denoiser(model: LLaDA) -> Denoiser:
  """Wraps a LLaDA model as a sampler `Denoiser`: `den(z [B, L] int32, t [B] f32) -> logits
  [B, L, V] float32`, with `reads_t=False` (the model has no time input, so the sampler's
  `cache=True` is allowed), `vocab_size=V`, the model's `mask_id` (a sampler with another
  mask id refuses it), the split contract (`features`: the trunk with `ln_f`; `head`:
  the output projection), so the sampler projects only the rows it draws, and the
  key-value cache contract (`prefill`, `cached`) that block decoding's `kv_cache` uses.

  The model's state is taken now (`nnx.split(model)`) and is the denoiser's `params`, a
  pytree leaf: a compiled sampler takes new weights without recompiling.

  Examples:
    >>> from flax import nnx
    >>> cfg = LLaDAConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1,
    ...                   mlp_hidden_size=16, max_sequence_length=6, mask_id=10,
    ...                   param_dtype="float32", dtype="float32")
    >>> abstract = nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(0)))   # shapes only
    >>> den = as_denoiser(abstract)
    >>> out = jax.eval_shape(lambda d, z, t: d(z, t), den, jnp.zeros((2, 6), jnp.int32),
    ...                      jnp.ones((2,)))
    >>> out.shape, out.dtype
    ((2, 6, 11), dtype('float32'))
  """
  if not isinstance(model, LLaDA):
    raise ArgumentTypeError(f"model must be a LLaDA, got {type(model).__name__}")
  graphdef, state = nnx.split(model)
  return Denoiser(_LLaDALogits(graphdef), state, features_apply=_LLaDAFeatures(graphdef),
                  head_apply=_LLaDAHead(graphdef), reads_t=False, vocab_size=model.cfg.vocab_size,
                  mask_id=model.cfg.mask_id,
                  prefill_apply=_LLaDAPrefill(graphdef), cached_apply=_LLaDACached(graphdef),
                  prefill_and_cached_apply=_LLaDAPrefillAndCached(graphdef))
