"""MaskGIT's bidirectional transformer (Chang et al., "MaskGIT: Masked Generative Image
Transformer", CVPR 2022; github.com/google-research/maskgit, `maskgit/nets/maskgit_transformer.py`)
in Flax NNX, and its `Denoiser`.

BERT-style and post-LN: word and position embeddings summed and layer-normalised; per layer,
multi-head self-attention (no mask) added to its input and layer-normalised, then a GELU MLP
added and layer-normalised; the MLM head is a dense layer, GELU and LayerNorm, then the
product with the word embeddings plus a bias. Every LayerNorm has epsilon 1e-12 and GELU is
the tanh approximation (`jax.nn.gelu`'s default), as in the official code.

The vocabulary is the official one: ids `0 .. K-1` are the image codes (`K = codebook_size`),
`K + c` is the token of class `c` (placed first in the sequence), and `V - 1` (`V = K + C + 1`)
is the mask token. The official code feeds the mask as id -1, which its embedding lookup wraps
to row `V - 1`; this model takes -1 as well and reads it as that row. The sampler uses the
explicit id `V - 1`, so every code `0 .. K-1` can be generated (the ReMDM fork instead reuses
code 1023 as a mask stand-in, so that code is never generated).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from remdm_jax.denoiser import Denoiser
from remdm_jax.validation import ArgumentTypeError, check_fields, check_range, option

LAYERNORM_EPSILON = 1e-12
OFFICIAL_MASK_ID = -1


@dataclasses.dataclass(frozen=True)
class MaskGitConfig:
  """The sizes of a MaskGIT transformer (defaults: the released ImageNet 256 x 256 model)."""

  codebook_size: int = option(1024, "K: image codes, ids 0..K-1")
  num_classes: int = option(1000, "C: class tokens, ids K..K+C-1 (a null class is one of them)")
  num_tokens: int = option(256, "image tokens per image (16 x 16); positions: num_tokens + 1")
  hidden_size: int = option(768, "width of the embeddings and layers")
  num_layers: int = option(24, "transformer layers")
  num_heads: int = option(16, "attention heads (hidden_size must divide evenly)")
  intermediate_size: int = option(3072, "MLP width")
  null_class: int | None = option(None, "the class trained as 'no class' (classifier-free "
                                        "guidance's unconditional model); None: none")

  def __post_init__(self):
    check_fields(self)
    for name in ("codebook_size", "num_classes", "num_tokens", "hidden_size", "num_layers",
                 "num_heads", "intermediate_size"):
      check_range(name, getattr(self, name), 1)
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size must be a multiple of num_heads, got hidden_size="
                       f"{self.hidden_size}, num_heads={self.num_heads}")
    if self.null_class is not None:
      check_range("null_class", self.null_class, 0, self.num_classes, high_open=True)

  @property
  def vocab_size(self) -> int:
    """V = K + C + 1 (codes, class tokens, the mask)."""
    return self.codebook_size + self.num_classes + 1

  @property
  def mask_id(self) -> int:
    """The mask token, V - 1 (the row the official id -1 reads)."""
    return self.vocab_size - 1

  @property
  def seq_len(self) -> int:
    """Class token and image tokens: num_tokens + 1 (the official max_position_embeddings)."""
    return self.num_tokens + 1

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def class_token(self, label: int) -> int:
    """The id of class `label`, `K + label`."""
    return self.codebook_size + label


def _init(rngs: nnx.Rngs, shape: tuple[int, ...]) -> nnx.Param:
  """The official initialiser: `truncated_normal(-2, 2) * 0.02`."""
  return nnx.Param(jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape) * 0.02)


def _zeros(shape: tuple[int, ...]) -> nnx.Param:
  return nnx.Param(jnp.zeros(shape, jnp.float32))


class Attention(nnx.Module):
  """Flax's `MultiHeadDotProductAttention` without a mask: query, key, value `[D, H, hd]`
  (and biases `[H, hd]`), scores scaled by `1 / sqrt(hd)`, out `[H, hd, D]`; float32."""

  def __init__(self, cfg: MaskGitConfig, rngs: nnx.Rngs):
    d, h, k = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    for name in ("query", "key", "value"):
      setattr(self, name + "_kernel", _init(rngs, (d, h, k)))
      setattr(self, name + "_bias", _zeros((h, k)))
    self.out_kernel, self.out_bias = _init(rngs, (h, k, d)), _zeros((d,))

  def __call__(self, x: jax.Array) -> jax.Array:
    """`[B, L, D] -> [B, L, D]`."""
    def project(name):
      kernel, bias = getattr(self, name + "_kernel")[...], getattr(self, name + "_bias")[...]
      return jnp.einsum("bld,dhk->blhk", x, kernel) + bias[None, None]
    query, key, value = project("query"), project("key"), project("value")
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    scores = jnp.einsum("bqhk,bshk->bhqs", query, key)
    weights = jax.nn.softmax(scores, axis=-1)
    mixed = jnp.einsum("bhqs,bshk->bqhk", weights, value)
    return jnp.einsum("bqhk,hkd->bqd", mixed, self.out_kernel[...]) + self.out_bias[...][None, None]


class Layer(nnx.Module):
  """One post-LN layer: `ln(x + attention(x))`, then `ln(a + W2 gelu(W1 a))`."""

  def __init__(self, cfg: MaskGitConfig, rngs: nnx.Rngs):
    d, i = cfg.hidden_size, cfg.intermediate_size
    self.attention = Attention(cfg, rngs)
    self.attention_ln = nnx.LayerNorm(d, epsilon=LAYERNORM_EPSILON, rngs=rngs)
    self.intermediate = nnx.Linear(d, i, kernel_init=_truncated, rngs=rngs)
    self.output = nnx.Linear(i, d, kernel_init=_truncated, rngs=rngs)
    self.output_ln = nnx.LayerNorm(d, epsilon=LAYERNORM_EPSILON, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    a = self.attention_ln(self.attention(x) + x)
    return self.output_ln(self.output(jax.nn.gelu(self.intermediate(a))) + a)


def _truncated(key, shape, dtype=jnp.float32):
  return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * 0.02


class MaskGit(nnx.Module):
  """`model(ids [B, L] int32) -> logits [B, L, V] float32`, `L <= num_tokens + 1`: the class
  token first (`K + label`), then image codes or the mask (`V - 1`, or the official -1)."""

  def __init__(self, cfg: MaskGitConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.hidden_size
    self.word_embeddings = _init(rngs, (cfg.vocab_size, d))
    self.position_embeddings = _init(rngs, (cfg.seq_len, d))
    self.embeddings_ln = nnx.LayerNorm(d, epsilon=LAYERNORM_EPSILON, rngs=rngs)
    self.layers = nnx.List([Layer(cfg, rngs) for _ in range(cfg.num_layers)])
    self.mlm_dense = nnx.Linear(d, d, kernel_init=_truncated, rngs=rngs)
    self.mlm_ln = nnx.LayerNorm(d, epsilon=LAYERNORM_EPSILON, rngs=rngs)
    self.mlm_bias = _zeros((cfg.vocab_size,))

  def features(self, ids: jax.Array) -> jax.Array:
    """`[B, L]` ids -> the last layer's output `[B, L, D]` float32."""
    self._check_ids(ids)
    ids = jnp.where(ids == OFFICIAL_MASK_ID, self.cfg.mask_id, ids)
    x = self.word_embeddings[...][ids] + self.position_embeddings[...][None, :ids.shape[1]]
    x = self.embeddings_ln(x)
    for layer in self.layers:
      x = layer(x)
    return x

  def head(self, h: jax.Array) -> jax.Array:
    """The MLM head: `h [..., D] -> logits [..., V] float32`."""
    m = self.mlm_ln(jax.nn.gelu(self.mlm_dense(h)))
    logits = jnp.einsum("...d,vd->...v", m, self.word_embeddings[...])
    return logits + jnp.broadcast_to(self.mlm_bias[...], logits.shape)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return self.head(self.features(ids))

  def _check_ids(self, ids: jax.Array) -> None:
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"ids must be [B, L] integer ids, got {ids.dtype}{list(ids.shape)}")
    if ids.shape[1] > self.cfg.seq_len:
      raise ValueError(f"sequence length must be <= num_tokens + 1 = {self.cfg.seq_len}, got "
                       f"{ids.shape[1]}")
    if not isinstance(ids, jax.core.Tracer) and ids.size and (
        int(ids.min()) < OFFICIAL_MASK_ID or int(ids.max()) >= self.cfg.vocab_size):
      raise ValueError(f"ids must lie in [-1, {self.cfg.vocab_size}) (-1: the mask), got "
                       f"{int(ids.min())}..{int(ids.max())}")


def _image_logits(logits: jax.Array, codebook_size: int) -> jax.Array:
  """Logits with every id that is not an image code (class tokens, the mask) at -inf."""
  codes = jnp.arange(logits.shape[-1]) < codebook_size
  return jnp.where(jnp.broadcast_to(codes, logits.shape), logits, -jnp.inf)


def _with_class(ids: jax.Array, class_token: int | None) -> jax.Array:
  """`ids` with its first position set to `class_token` (None: unchanged)."""
  return ids if class_token is None else ids.at[:, 0].set(class_token)


@dataclasses.dataclass(frozen=True)
class _Features:
  """`(state, z [B, L] int32, t) -> h [B, L, D]` (`t` is not read); `class_token` replaces
  position 0 when set."""

  graphdef: nnx.GraphDef
  class_token: int | None

  def __call__(self, state, z: jax.Array, t: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, state).features(_with_class(z, self.class_token))


@dataclasses.dataclass(frozen=True)
class _Head:
  """`(state, h [B, K, D], t) -> logits [B, K, V]`: the MLM head, image codes only."""

  graphdef: nnx.GraphDef

  def __call__(self, state, h: jax.Array, t: jax.Array) -> jax.Array:
    model = nnx.merge(self.graphdef, state)
    return _image_logits(model.head(h), model.cfg.codebook_size)


@dataclasses.dataclass(frozen=True)
class _Logits:
  """`(state, z [B, L] int32, t) -> logits [B, L, V]`: features, then the head."""

  graphdef: nnx.GraphDef
  class_token: int | None

  def __call__(self, state, z: jax.Array, t: jax.Array) -> jax.Array:
    return _Head(self.graphdef)(state, _Features(self.graphdef, self.class_token)(state, z, t), t)


def as_denoiser(model: MaskGit, *, label: int | None = None) -> Denoiser:
  """The transformer as a sampler `Denoiser` over its own ids: `den(z [B, L] int32, t [B]
  float32) -> logits [B, L, V] float32`, `z` the class token then the image tokens (mask id
  `V - 1`), the logits of every id but the image codes `-inf` (a class token or the mask is
  never drawn). Sample with `seq_len = num_tokens + 1` and a prompt holding each row's class
  token at position 0 and the mask elsewhere (`image_prompt`).

  `label` (a class of the model, e.g. a null class it was trained with) replaces every row's
  class token: `classifier_free_guidance(as_denoiser(m), as_denoiser(m, label=NULL), gamma)`
  is classifier-free guidance. `reads_t=False`; the split contract (trunk, MLM head) lets
  the Bernoulli strategies run the head on the rows they draw only.

  Raises:
    ArgumentTypeError: not a `MaskGit`. ValueError: `label` outside `[0, num_classes)`.
  """
  if not isinstance(model, MaskGit):
    raise ArgumentTypeError(f"model must be a MaskGit, got {type(model).__name__}")
  token = None
  if label is not None:
    check_range("label", label, 0, model.cfg.num_classes, high_open=True)
    token = model.cfg.class_token(label)
  graphdef, state = nnx.split(model)
  return Denoiser(_Logits(graphdef, token), state, features_apply=_Features(graphdef, token),
                  head_apply=_Head(graphdef), reads_t=False, vocab_size=model.cfg.vocab_size,
                  mask_id=model.cfg.mask_id)


def image_prompt(cfg: MaskGitConfig, labels) -> jax.Array:
  """`[B, num_tokens + 1] int32`: row b is class `labels[b]`'s token, then masks.

  Raises:
    ValueError: a label outside `[0, num_classes)`.
  """
  labels = jnp.asarray(labels, jnp.int32)
  if labels.ndim != 1:
    raise ValueError(f"labels must be [B] class ids, got shape {list(labels.shape)}")
  if not isinstance(labels, jax.core.Tracer) and labels.size and (
      int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
    raise ValueError(f"labels must lie in [0, {cfg.num_classes}), got {int(labels.min())}.."
                     f"{int(labels.max())}")
  prompt = jnp.full((labels.shape[0], cfg.seq_len), cfg.mask_id, jnp.int32)
  return prompt.at[:, 0].set(labels + cfg.codebook_size)

