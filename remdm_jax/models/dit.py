"""The MDLM diffusion transformer (DiT), laid out to match the released PyTorch weights.

Sahoo et al., "Simple and Effective Masked Diffusion Language Models", 2024, arXiv
2406.07524: rotary attention blocks with adaLN-Zero modulation from a noise embedding. Each
attribute name mirrors a released key (`blocks.{i}.attn_qkv`, `sigma_map.mlp_0`, ...), so a
weight import is a rename and a transpose. Weight import and the causal variant are not here.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from remdm_jax.denoiser import Denoiser
from remdm_jax.schedules import total_noise
from remdm_jax.validation import check_choice, check_fields, check_int, check_range, option

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Sizes of a DiT; the defaults are the released small OpenWebText model."""

  vocab_size: int = option(50_258, "V, including the mask id")
  hidden: int = option(768, "D")
  heads: int = option(12, "D / heads = 64 per head")
  blocks: int = option(12, "number of transformer blocks")
  cond_dim: int = option(128, "C, width of the noise conditioning")
  max_length: int = option(1024, "longest sequence the rotary cache is checked against")
  time_conditioning: bool = option(False, "False: sigma is ignored (the release feeds 0)")
  causal: bool = option(False, "True: causal attention, no adaLN (autoregressive model)")
  dropout: float = option(0.1, "applied only when rngs are passed at call time")
  dtype: str = option("float32", "compute dtype of the matmuls; LayerNorm and logits f32")
  num_classes: int = option(0, "> 0: class-conditional; a class embedding is added to c, and "
                               "id num_classes is the null (unconditional) class")

  def __post_init__(self):
    check_fields(self)
    for name in ("vocab_size", "hidden", "heads", "blocks", "cond_dim", "max_length"):
      check_range(name, getattr(self, name), 1)
    if self.hidden % self.heads or (self.hidden // self.heads) % 2:
      raise ValueError(f"hidden / heads must be an even integer, got hidden={self.hidden}, "
                       f"heads={self.heads}")
    check_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
    check_choice("dtype", self.dtype, DTYPES)
    check_range("num_classes", self.num_classes, 0)
    if self.num_classes and self.causal:
      raise ValueError(f"num_classes needs the adaLN conditioning of a non-causal DiT, got "
                       f"num_classes={self.num_classes} with causal=True")


def check_length(length: int, cfg: DiTConfig) -> None:
  """A sequence of `length` positions fits the model's rotary cache (`cfg.max_length`)."""
  if length > cfg.max_length:
    raise ValueError(f"sequence length must be <= max_length={cfg.max_length}, got {length}")


def timestep_features(sigma: jax.Array, dim: int = 256) -> jax.Array:
  """Sinusoid features `[cos(sigma f_k), sin(sigma f_k)]`, `f_k = 10000^(-k / (dim/2))`;
  `[B] f32 -> [B, dim] f32`."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = sigma.astype(jnp.float32)[:, None] * freqs[None]                # [B, half]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rotary(x: jax.Array) -> jax.Array:
  """GPT-NeoX rotary embedding (rotate-half, base 10000); `[B, L, H, Dh] -> same`."""
  length, head_dim = x.shape[1], x.shape[-1]
  inv_freq = 1.0 / 10_000.0 ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None]  # [L, Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]     # [1, L, 1, Dh]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  return (x * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def _modulate(x, shift, scale):
  return x * (1.0 + scale) + shift


def _modulations(layer, c, count):
  """`count` adaLN outputs `[B, 1, D]` from `c`, or (shift 0, scale 0, gate 1) pairs for a
  causal model, which has no adaLN layers."""
  if layer is None:
    return (0.0, 0.0, 1.0, 0.0, 0.0, 1.0)[:count]
  return jnp.split(layer(c)[:, None, :], count, axis=-1)


def _zero_linear(cin, cout, rngs, dtype):
  return nnx.Linear(cin, cout, kernel_init=nnx.initializers.zeros, dtype=dtype, rngs=rngs)


class SigmaMap(nnx.Module):
  """`sigma -> SiLU(Linear(SiLU(Linear(features(sigma)))))`: the conditioning `c [B, C]`."""

  def __init__(self, cond_dim: int, *, rngs: nnx.Rngs):
    self.mlp_0 = nnx.Linear(256, cond_dim, rngs=rngs)
    self.mlp_2 = nnx.Linear(cond_dim, cond_dim, rngs=rngs)

  def __call__(self, sigma):
    return jax.nn.silu(self.mlp_2(jax.nn.silu(self.mlp_0(timestep_features(sigma)))))


class Block(nnx.Module):
  """One DiT block: adaLN-modulated rotary self-attention and a tanh-GELU MLP."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    d, dtype = cfg.hidden, jnp.dtype(cfg.dtype)
    self.heads, self.causal = cfg.heads, cfg.causal
    self.norm1 = nnx.LayerNorm(d, epsilon=1e-5, use_bias=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d, epsilon=1e-5, use_bias=False, rngs=rngs)
    self.attn_qkv = nnx.Linear(d, 3 * d, use_bias=False, dtype=dtype, rngs=rngs)
    self.attn_out = nnx.Linear(d, d, use_bias=False, dtype=dtype, rngs=rngs)
    self.mlp_0 = nnx.Linear(d, 4 * d, dtype=dtype, rngs=rngs)
    self.mlp_2 = nnx.Linear(4 * d, d, dtype=dtype, rngs=rngs)
    self.adaLN_modulation = (None if cfg.causal else
                             _zero_linear(cfg.cond_dim, 6 * d, rngs, jnp.float32))
    self.dropout = nnx.Dropout(cfg.dropout)

  def _drop(self, x, rngs):
    return self.dropout(x, deterministic=rngs is None, rngs=rngs)

  def __call__(self, x, c, rngs):
    b, l, d = x.shape
    shift1, scale1, gate1, shift2, scale2, gate2 = _modulations(
        self.adaLN_modulation, c, 6)                                      # 6 x [B, 1, D]
    h = _modulate(self.norm1(x.astype(jnp.float32)), shift1, scale1)
    qkv = self.attn_qkv(h).reshape(b, l, 3, self.heads, d // self.heads)  # [B, L, 3, H, Dh]
    q, k, v = rotary(qkv[:, :, 0]), rotary(qkv[:, :, 1]), qkv[:, :, 2]
    att = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)   # [B, L, H, Dh]
    x = x + gate1 * self._drop(self.attn_out(att.reshape(b, l, d)), rngs)
    h = _modulate(self.norm2(x.astype(jnp.float32)), shift2, scale2)
    mlp = self.mlp_2(jax.nn.gelu(self.mlp_0(h), approximate=True))
    return x + gate2 * self._drop(mlp, rngs)


class DiT(nnx.Module):
  """`model(tokens [B, L] int32, sigma [B] f32) -> logits [B, L, V] float32`.

  With `cfg.causal`, the same blocks with a causal mask and without adaLN: position `i` sees
  tokens `<= i` (logits at `i` are meant to predict token `i + 1`) and `sigma` is ignored.
  """

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    conditioned = not cfg.causal
    self.vocab_embed = nnx.Embed(cfg.vocab_size, cfg.hidden, rngs=rngs)
    self.sigma_map = SigmaMap(cfg.cond_dim, rngs=rngs) if conditioned else None
    self.class_embed = (nnx.Embed(cfg.num_classes + 1, cfg.cond_dim, rngs=rngs)
                        if cfg.num_classes else None)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.blocks)])
    self.norm_final = nnx.LayerNorm(cfg.hidden, epsilon=1e-5, use_bias=False, rngs=rngs)
    self.output_adaLN = (_zero_linear(cfg.cond_dim, 2 * cfg.hidden, rngs, jnp.float32)
                         if conditioned else None)
    self.output_linear = _zero_linear(cfg.hidden, cfg.vocab_size, rngs, jnp.float32)

  def __call__(self, tokens: jax.Array, sigma: jax.Array, *, labels: jax.Array | None = None,
               rngs: nnx.Rngs | None = None):
    """Args: tokens `[B, L] int32`; sigma `[B] float32`; labels `[B] int32` in
    `[0, num_classes]` for a class-conditional model (`num_classes` or None: the null class);
    rngs enables dropout (training)."""
    return self.output_linear(self.features(tokens, sigma, labels=labels, rngs=rngs)).astype(
        jnp.float32)

  def _with_class(self, c, labels, batch):
    """`c + class_embed(labels)` for a class-conditional model (labels None: the null class)."""
    if self.class_embed is None:
      if labels is not None:
        raise ValueError("labels need a class-conditional DiT (DiTConfig.num_classes > 0)")
      return c
    if labels is None:
      labels = jnp.full((batch,), self.cfg.num_classes, jnp.int32)
    labels = jnp.asarray(labels)
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be [B] = [{batch}] integer class ids, got {labels.dtype}"
                       f"{list(labels.shape)}")
    return c + self.class_embed(labels)

  def project(self, h: jax.Array) -> jax.Array:
    """The output layer in the compute dtype: `h [..., D] f32 -> logits [..., V]`, float32 for
    a float32 model (equal to `__call__`'s), bfloat16 for a bfloat16 one (half the bytes for
    the sampler to hold; its probabilities and draws are float32 again)."""
    dtype = jnp.dtype(self.cfg.dtype)
    if dtype == jnp.float32:
      return self.output_linear(h)
    linear = self.output_linear
    logits = jnp.einsum("...d,dv->...v", h.astype(dtype), linear.kernel[...].astype(dtype))
    return logits + linear.bias[...].astype(dtype)[(None,) * (h.ndim - 1)]

  def features(self, tokens: jax.Array, sigma: jax.Array, *, labels: jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Final hidden states, normalised and modulated, before the output layer; `[B, L, D]`."""
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be [B, L] integer ids, got {tokens.dtype}"
                       f"{list(tokens.shape)}")
    if sigma.shape != tokens.shape[:1]:
      raise ValueError(f"sigma must be [B] = [{tokens.shape[0]}], got {list(sigma.shape)}")
    check_length(tokens.shape[1], self.cfg)
    c = None
    if self.sigma_map is not None:
      sigma = sigma if self.cfg.time_conditioning else jnp.zeros_like(sigma)
      c = self.sigma_map(sigma)                                           # [B, C]
    c = self._with_class(c, labels, tokens.shape[0])
    x = self.vocab_embed(tokens).astype(jnp.dtype(self.cfg.dtype))        # [B, L, D]
    for block in self.blocks:
      x = block(x, c, rngs)
    shift, scale = _modulations(self.output_adaLN, c, 2)                  # 2 x [B, 1, D]
    return _modulate(self.norm_final(x.astype(jnp.float32)), shift, scale)  # [B, L, D] f32


@dataclasses.dataclass(frozen=True)
class _DiTFeatures:
  """`(state, z [B, L] int32, t [B] f32) -> h [B, L, D] f32`: the trunk of a DiT with the
  final adaLN. Equal settings compare equal (as do `_DiTHead` and `_DiTLogits`), so samplers
  built from two `as_denoiser` calls share one executable."""

  graphdef: nnx.GraphDef
  schedule: object          # alpha(t) for the total noise; None: log-linear, eps = 1e-3
  label: int | None         # the class of a class-conditional model; None: the null class

  def trunk(self, state, z: jax.Array, t: jax.Array):
    """`(model, h [B, L, D] f32)`."""
    model = nnx.merge(self.graphdef, state)
    labels = (None if self.label is None else
              jnp.full(z.shape[:1], self.label, jnp.int32))              # [B]
    return model, model.features(z, total_noise(t, self.schedule), labels=labels)

  def __call__(self, state, z: jax.Array, t: jax.Array) -> jax.Array:
    return self.trunk(state, z, t)[1]


@dataclasses.dataclass(frozen=True)
class _DiTLogits(_DiTFeatures):
  """`(state, z, t) -> logits [B, L, V]`: the trunk, then the output projection."""

  def __call__(self, state, z: jax.Array, t: jax.Array) -> jax.Array:
    model, h = self.trunk(state, z, t)
    return model.project(h)                                              # [B, L, V]


@dataclasses.dataclass(frozen=True)
class _DiTHead:
  """`(state, h [B, K, D], t) -> logits [B, K, V]`: position-wise (the adaLN modulation is
  applied in the trunk)."""

  graphdef: nnx.GraphDef

  def __call__(self, state, h: jax.Array, t: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, state).project(h)


def as_denoiser(model: DiT, schedule=None, *, label: int | None = None) -> Denoiser:
  """Wraps a DiT as a sampler `Denoiser`: `den(z [B, L] int32, t [B] f32) -> logits [B, L, V]`
  (float32, or bfloat16 for a model with `dtype="bfloat16"`: `DiT.project`).

  The model's state (`nnx.split(model)[1]`, taken now: later in-place changes to the model do
  not reach the denoiser) is its `params`, a pytree leaf, so a sampler compiled for it takes
  new weights without recompiling and never bakes them in; two calls with the same settings
  give denoisers that share a compiled sampler. The sampler's time `t` becomes MDLM's total
  noise `sigma = -log alpha(t)` (default schedule: log-linear with eps = 1e-3, as MDLM
  trains); `reads_t` is the model's time conditioning. It carries the split contract (the
  trunk with the final adaLN, and the output projection), so the sampler projects only the
  rows it draws. For a class-conditional model, `label` (an int class) conditions every
  call; None is the null class, so `as_denoiser(model, label=1)` and `as_denoiser(model)` are
  the two inputs of `remdm_jax.classifier_free_guidance`.

  Raises:
    ValueError: the model is causal (autoregressive): it predicts the next token, not the
      masked ones, and would sample garbage; or `label` is not a class of the model.
  """
  if model.cfg.causal:
    raise ValueError("as_denoiser needs a masked diffusion DiT, got a causal "
                     "(autoregressive) one; use as_evaluator for causal models")
  if label is not None:
    label = check_range("label", check_int("label", label, 0), 0, model.cfg.num_classes,
                        high_open=True, context=f" (the model's {model.cfg.num_classes} classes)")
  graphdef, state = nnx.split(model)
  return Denoiser(_DiTLogits(graphdef, schedule, label), state,
                  features_apply=_DiTFeatures(graphdef, schedule, label),
                  head_apply=_DiTHead(graphdef), reads_t=model.cfg.time_conditioning,
                  vocab_size=model.cfg.vocab_size)


def denoiser_and_params(model: DiT, schedule=None) -> tuple[Denoiser, nnx.State]:
  """`(denoiser, params)`: `as_denoiser(model, schedule)` and its parameters, for
  `remdm_jax.make_sampler(denoiser, ...)(key, params)` and the one-call losses
  (`denoiser.apply(params, z, t)`).

  Examples:
    >>> from flax import nnx
    >>> model = DiT(DiTConfig(vocab_size=7, hidden=8, heads=2, blocks=1, cond_dim=4,
    ...                       max_length=6), rngs=nnx.Rngs(0))
    >>> den, params = denoiser_and_params(model)
    >>> den.apply(params, jnp.zeros((2, 6), jnp.int32), jnp.ones((2,))).shape
    (2, 6, 7)
  """
  denoiser = as_denoiser(model, schedule)
  return denoiser, denoiser.params


def as_evaluator(model: DiT):
  """A causal DiT as the `(logits_fn, features_fn)` pair of `remdm_jax.eval`: both take
  `tokens [B, L] int32` and return `[B, L, V]` logits / `[B, L, D]` final hidden states.

  Raises:
    ValueError: the model is a masked diffusion model, not a causal one.
  """
  if not model.cfg.causal:
    raise ValueError("as_evaluator needs a causal DiT (objective 'ar'), got a masked "
                     "diffusion one; use as_denoiser for it")
  no_noise = lambda tokens: jnp.zeros((tokens.shape[0],), jnp.float32)
  return (lambda tokens: model(tokens, no_noise(tokens)),
          lambda tokens: model.features(tokens, no_noise(tokens)))
