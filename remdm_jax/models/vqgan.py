"""The decoder half of MaskGIT's VQGAN tokenizer (github.com/google-research/maskgit,
`maskgit/nets/vqgan_tokenizer.py`) in Flax NNX: image codes to pixels (`decode_from_indices`).

The codebook lookup, a 3x3 convolution to the widest level, residual blocks, then for each
level from the widest down: residual blocks and (but for the last level) a nearest-neighbour
2x upsampling and a 3x3 convolution; then GroupNorm, swish and a 3x3 convolution to RGB.
GroupNorm has 32 groups and epsilon 1e-6, convolutions pad "SAME", as in the official code. A
residual block whose width changes adds a 1x1 convolution of its *own output* (not of its
input), exactly as the official `ResBlock` does, so released weights read as they are.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from remdm_jax.validation import check_fields, check_range, option


@dataclasses.dataclass(frozen=True)
class VQGANDecoderConfig:
  """Decoder sizes (defaults: the released ImageNet 256 x 256 tokenizer)."""

  codebook_size: int = option(1024, "codes")
  embedding_dim: int = option(256, "width of a code vector")
  widths: tuple[int, ...] = option((128, 128, 256, 256, 512), "channels of each level, from "
                                   "the output level to the widest (filters * multipliers)")
  num_res_blocks: int = option(2, "residual blocks per level")
  output_dim: int = option(3, "output channels")

  def __post_init__(self):
    check_fields(self)
    for name in ("codebook_size", "embedding_dim", "num_res_blocks", "output_dim"):
      check_range(name, getattr(self, name), 1)
    if not self.widths or any(w < 32 or w % 32 for w in self.widths):
      raise ValueError(f"widths must be multiples of 32 (GroupNorm's 32 groups), got "
                       f"{self.widths}")


def _conv(cin: int, cout: int, size: int, bias: bool, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(cin, cout, (size, size), use_bias=bias, rngs=rngs)


def _norm(width: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(width, num_groups=32, epsilon=1e-6, rngs=rngs)


class ResBlock(nnx.Module):
  """`x + f(x)`, or `f(x) + conv1x1(f(x))` when the width changes (the official quirk)."""

  def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
    self.norm0, self.conv0 = _norm(cin, rngs), _conv(cin, cout, 3, False, rngs)
    self.norm1, self.conv1 = _norm(cout, rngs), _conv(cout, cout, 3, False, rngs)
    self.shortcut = _conv(cout, cout, 1, False, rngs) if cin != cout else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv0(jax.nn.swish(self.norm0(x)))
    h = self.conv1(jax.nn.swish(self.norm1(h)))
    return h + (x if self.shortcut is None else self.shortcut(h))


class VQGANDecoder(nnx.Module):
  """`decoder.decode_from_indices(ids [B, h, w] int32) -> pixels [B, h*u, w*u, 3] float32`
  (`u = 2^(levels - 1)`, `levels = len(cfg.widths)`), nominally in [0, 1] and not clipped
  (clip before saving)."""

  def __init__(self, cfg: VQGANDecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.codebook = nnx.Param(jax.random.uniform(rngs.params(), (cfg.codebook_size,
                                                                 cfg.embedding_dim)))
    top = cfg.widths[-1]
    self.conv_in = _conv(cfg.embedding_dim, top, 3, True, rngs)
    blocks, ups, width = [], [], top
    for _ in range(cfg.num_res_blocks):
      blocks.append(ResBlock(width, width, rngs))
    for level in reversed(range(len(cfg.widths))):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResBlock(width, cfg.widths[level], rngs))
        width = cfg.widths[level]
      if level > 0:
        ups.append(_conv(width, width, 3, True, rngs))
    self.blocks, self.ups = nnx.List(blocks), nnx.List(ups)
    self.norm_out = _norm(width, rngs)
    self.conv_out = _conv(width, cfg.output_dim, 3, True, rngs)

  def decode(self, features: jax.Array) -> jax.Array:
    """Code vectors `[B, h, w, E]` -> pixels `[B, H, W, output_dim]` float32."""
    x = self.conv_in(features)
    per = self.cfg.num_res_blocks
    for block in self.blocks[:per]:
      x = block(x)
    for index, level in enumerate(reversed(range(len(self.cfg.widths)))):
      for block in self.blocks[per * (index + 1):per * (index + 2)]:
        x = block(x)
      if level > 0:
        n, h, w, c = x.shape
        x = self.ups[index](jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest"))
    return self.conv_out(jax.nn.swish(self.norm_out(x)))

  def decode_from_indices(self, ids: jax.Array) -> jax.Array:
    """Codes `[B, h, w]` int in [0, K) -> pixels `[B, h*u, w*u, output_dim]` float32."""
    if ids.ndim != 3 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f"ids must be [B, h, w] integer codes, got {ids.dtype}{list(ids.shape)}")
    return self.decode(self.codebook[...][ids])

  def decode_tokens(self, ids: jax.Array) -> jax.Array:
    """Codes `[B, T]` (`T = h * h`, row-major) -> pixels `[B, H, W, output_dim]` float32
    clipped to [0, 1] (the image tokenizers' common contract)."""
    if ids.ndim != 2:
      raise ValueError(f"ids must be [B, T] codes, got shape {list(ids.shape)}")
    side = math.isqrt(ids.shape[1])
    if side * side != ids.shape[1]:
      raise ValueError(f"ids must hold a square grid of codes, got {ids.shape[1]}")
    return jnp.clip(self.decode_from_indices(ids.reshape(ids.shape[0], side, side)), 0.0, 1.0)
