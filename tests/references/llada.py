"""LLaDA's released folder layout at tiny sizes (config.json, sharded safetensors, the index)
and an independent float64 NumPy forward pass written from the reference architecture."""

import json

import numpy as np

from remdm_jax.weights.safetensors_io import write_safetensors

VOCAB, MASK_ID, D_MODEL, LAYERS, HEADS, MLP, LENGTH = 40, 39, 32, 2, 4, 48, 8


def released_config(**overrides):
  """A config.json in the released field names (the 8B file's fields, tiny sizes)."""
  config = {
      "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
      "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
      "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
      "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
      "d_model": D_MODEL, "embedding_dropout": 0.0, "embedding_size": VOCAB,
      "eos_token_id": 37, "flash_attention": False, "include_bias": False,
      "include_qkv_bias": False, "init_device": "meta", "init_fn": "mitchell",
      "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
      "layer_norm_with_affine": True, "mask_token_id": MASK_ID, "max_sequence_length": 16,
      "mlp_hidden_size": MLP, "mlp_ratio": 4, "model_type": "llada",
      "multi_query_attention": None, "n_heads": HEADS, "n_kv_heads": HEADS,
      "n_layers": LAYERS, "pad_token_id": 37, "precision": "amp_bf16",
      "residual_dropout": 0.0, "rms_norm_eps": 1e-5, "rope": True,
      "rope_full_precision": True, "rope_theta": 500_000.0, "scale_logits": False,
      "torch_dtype": "bfloat16", "use_cache": False, "vocab_size": 38,
      "weight_tying": False}
  return config | overrides


def released_tensors(config, seed=0):
  """Random float64 weights under the released keys, PyTorch `[out, in]` layout."""
  rng = np.random.default_rng(seed)
  d, m, v = config["d_model"], config["mlp_hidden_size"], config["embedding_size"]
  kv = config["n_kv_heads"] * d // config["n_heads"]
  shapes = {"wte.weight": (v, d), "ln_f.weight": (d,)}
  if not config["weight_tying"]:
    shapes["ff_out.weight"] = (v, d)
  for i in range(config["n_layers"]):
    shapes |= {f"blocks.{i}.attn_norm.weight": (d,), f"blocks.{i}.ff_norm.weight": (d,),
               f"blocks.{i}.q_proj.weight": (d, d), f"blocks.{i}.k_proj.weight": (kv, d),
               f"blocks.{i}.v_proj.weight": (kv, d), f"blocks.{i}.attn_out.weight": (d, d),
               f"blocks.{i}.ff_proj.weight": (m, d), f"blocks.{i}.up_proj.weight": (m, d),
               f"blocks.{i}.ff_out.weight": (d, m)}
  out = {}
  for name, shape in shapes.items():
    if len(shape) == 1:     # norm weights away from 1, so w * x and (1 + w) * x differ
      value = 1.0 + 0.3 * rng.standard_normal(shape)
    else:
      value = (1.0 if name == "wte.weight" else 1.5 / np.sqrt(shape[1])) * \
          rng.standard_normal(shape)
    out["model.transformer." + name] = value
  return out


def write_folder(folder, config, tensors, dtype=np.float32):
  """config.json, two shards and the index, as the release lays them out."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config))
  names = sorted(tensors)
  first = [k for k in names if ".blocks.0." in k or k.endswith("wte.weight")]
  parts = {"model-00001-of-00002.safetensors": first,
           "model-00002-of-00002.safetensors": [k for k in names if k not in first]}
  weight_map = {}
  for shard, keys in parts.items():
    write_safetensors(folder / shard, {k: np.asarray(tensors[k]).astype(dtype) for k in keys})
    weight_map |= {k: shard for k in keys}
  index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  return folder


def np_forward(config, tensors, tokens, positions, cache=None, fresh=None):
  """The LLaDA forward in float64 NumPy for one sequence: RMSNorm `w * x / sqrt(mean(x^2) +
  eps)`; rotary as an explicit rotation of the pairs `(x_i, x_{i + Dh/2})` by
  `p * theta^(-2i/Dh)`; softmax attention over all positions, scale `1/sqrt(Dh)`, key/value
  head `n // group`; SiLU(gate) * up; `ln_f`; `ff_out` or the tied embedding; optional
  `1/sqrt(D)`. Returns the logits `[W, V]` of `tokens [W]` at `positions [W]` and every
  layer's `(k, v)` `[W, Hkv, Dh]`. With `cache` (per layer `(k, v)` `[L, Hkv, Dh]`), the
  queries attend to the cache with the `fresh` rows' entries replaced by their own."""
  w = lambda name: np.asarray(tensors["model.transformer." + name], np.float64)
  d, heads, kv_heads = config["d_model"], config["n_heads"], config["n_kv_heads"]
  hd, eps = d // heads, config["rms_norm_eps"]
  rms = lambda x, g: g * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
  angle = np.asarray(positions)[:, None] * config["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
  cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]                # [W, 1, Dh/2]
  rope = lambda x: np.concatenate([x[..., :hd // 2] * cos - x[..., hd // 2:] * sin,
                                   x[..., hd // 2:] * cos + x[..., :hd // 2] * sin], -1)
  x, kvs = w("wte.weight")[tokens], []
  for i in range(config["n_layers"]):
    p = lambda name: w(f"blocks.{i}.{name}.weight")
    h = rms(x, p("attn_norm"))
    q = rope((h @ p("q_proj").T).reshape(-1, heads, hd))
    k = rope((h @ p("k_proj").T).reshape(-1, kv_heads, hd))
    v = (h @ p("v_proj").T).reshape(-1, kv_heads, hd)
    kvs.append((k, v))
    if cache is not None:
      k_all, v_all = (c.copy() for c in cache[i])
      k_all[np.asarray(positions)[fresh]], v_all[np.asarray(positions)[fresh]] = k[fresh], v[fresh]
      k, v = k_all, v_all
    k, v = (np.repeat(a, heads // kv_heads, axis=1) for a in (k, v))
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    x = x + np.einsum("hqk,khd->qhd", probs, v).reshape(-1, d) @ p("attn_out").T
    h = rms(x, p("ff_norm"))
    gate, up = h @ p("ff_proj").T, h @ p("up_proj").T
    x = x + (gate / (1.0 + np.exp(-gate)) * up) @ p("ff_out").T
  x = rms(x, w("ln_f.weight"))
  logits = x @ (w("wte.weight") if config["weight_tying"] else w("ff_out.weight")).T
  return (logits / np.sqrt(d) if config["scale_logits"] else logits), kvs


def reference_logits(config, tensors, tokens):
  """`np_forward` of every row of `tokens [B, L]`: float64 logits `[B, L, V]`."""
  positions = np.arange(tokens.shape[1])
  return np.stack([np_forward(config, tensors, row, positions)[0] for row in tokens])
