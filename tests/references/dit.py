"""The DiT's released tensors (random, under the released names) and an independent float64
NumPy forward pass written from the brief."""

import numpy as np

from remdm_jax.models import DiTConfig

SMALL = DiTConfig(vocab_size=13, hidden=32, heads=4, blocks=2, cond_dim=8, max_length=32,
                  time_conditioning=True)


def released_tensors(cfg, seed=0):
  """Random float32 weights under the released key names and shapes."""
  rng = np.random.default_rng(seed)
  d, c, v = cfg.hidden, cfg.cond_dim, cfg.vocab_size
  shapes = {"vocab_embed.embedding": (v, d), "sigma_map.mlp.0.weight": (c, 256),
            "sigma_map.mlp.0.bias": (c,), "sigma_map.mlp.2.weight": (c, c),
            "sigma_map.mlp.2.bias": (c,), "output_layer.norm_final.weight": (d,),
            "output_layer.linear.weight": (v, d), "output_layer.linear.bias": (v,),
            "output_layer.adaLN_modulation.weight": (2 * d, c),
            "output_layer.adaLN_modulation.bias": (2 * d,)}
  for i in range(cfg.blocks):
    shapes |= {f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,),
               f"blocks.{i}.attn_qkv.weight": (3 * d, d), f"blocks.{i}.attn_out.weight": (d, d),
               f"blocks.{i}.mlp.0.weight": (4 * d, d), f"blocks.{i}.mlp.0.bias": (4 * d,),
               f"blocks.{i}.mlp.2.weight": (d, 4 * d), f"blocks.{i}.mlp.2.bias": (d,),
               f"blocks.{i}.adaLN_modulation.weight": (6 * d, c),
               f"blocks.{i}.adaLN_modulation.bias": (6 * d,)}
  out = {}
  for name, shape in shapes.items():
    scale = 1.0 if len(shape) == 1 and "norm" in name else 1.0 / np.sqrt(shape[-1])
    base = 1.0 if "norm" in name else 0.0
    out["backbone." + name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
  head_dim = d // cfg.heads
  out["backbone.rotary_emb.inv_freq"] = (
      1.0 / 10_000 ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
  return out


def numpy_forward(w, tokens, sigma, cfg, causal=False):
  """float64 forward pass of brief section 8, from released tensors (optionally masked)."""
  w = {k.removeprefix("backbone."): v.astype(np.float64) for k, v in w.items()}
  silu = lambda x: x / (1 + np.exp(-x))
  gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  def lin(x, name, bias=True):
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if bias else y
  def ln(x, weight):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * weight
  sigma = sigma if cfg.time_conditioning else np.zeros_like(sigma)
  k = np.arange(128)
  args = sigma[:, None] * np.exp(-np.log(10_000) * k / 128)[None]
  c = silu(lin(silu(lin(np.concatenate([np.cos(args), np.sin(args)], -1),
                        "sigma_map.mlp.0")), "sigma_map.mlp.2"))
  b, l = tokens.shape
  d, h = cfg.hidden, cfg.heads
  dh = d // h
  x = w["vocab_embed.embedding"][tokens]
  inv = 1.0 / 10_000 ** (np.arange(0, dh, 2) / dh)
  ang = np.arange(l)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  def rot(q):   # [B, L, H, dh], pairs (j, j + dh/2)
    q1, q2 = q[..., :dh // 2], q[..., dh // 2:]
    return q * cos[None, :, None] + np.concatenate([-q2, q1], -1) * sin[None, :, None]
  for i in range(cfg.blocks):
    p = f"blocks.{i}"
    mods = np.split(lin(c, p + ".adaLN_modulation"), 6, axis=-1)
    sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in mods)
    hid = ln(x, w[p + ".norm1.weight"]) * (1 + sc1) + sh1
    qkv = lin(hid, p + ".attn_qkv", bias=False).reshape(b, l, 3, h, dh)
    q, kk, v = rot(qkv[:, :, 0]), rot(qkv[:, :, 1]), qkv[:, :, 2]
    s = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(dh)
    if causal:
      s = np.where(np.tril(np.ones((l, l), bool)), s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    att = np.einsum("bhqk,bkhd->bqhd", s / s.sum(-1, keepdims=True), v).reshape(b, l, d)
    x = x + g1 * lin(att, p + ".attn_out", bias=False)
    hid = ln(x, w[p + ".norm2.weight"]) * (1 + sc2) + sh2
    x = x + g2 * lin(gelu(lin(hid, p + ".mlp.0")), p + ".mlp.2")
  shift, scale = np.split(lin(c, "output_layer.adaLN_modulation"), 2, axis=-1)
  hid = ln(x, w["output_layer.norm_final.weight"]) * (1 + scale[:, None]) + shift[:, None]
  return lin(hid, "output_layer.linear")
