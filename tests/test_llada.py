"""LLaDA: tiny checkpoints in the released folder layout, loaded and checked against an
independent float64 NumPy forward pass written from the reference architecture."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, PartitionSpec as P

import remdm_jax
from remdm_jax.models.llada import LLaDA, LLaDAConfig, as_denoiser
from remdm_jax.weights.llada_io import load_llada
from remdm_jax.weights.safetensors_io import SafetensorsFile, read_header, write_safetensors

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


CONFIGS = {
    "multi_head": released_config(),
    "grouped_query_tied": released_config(n_kv_heads=2, weight_tying=True, scale_logits=True,
                                          rope_theta=10_000.0),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("llada")
  return {name: (write_folder(root / name, config, released_tensors(config)), config)
          for name, config in CONFIGS.items()}


def tokens_for(seed=0, batch=2):
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, LENGTH)).astype(np.int32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_float64_reference(folders, name):
  folder, config = folders[name]
  model = load_llada(folder, dtype="float32")
  tokens = tokens_for()
  expected = reference_logits(config, released_tensors(config), tokens)
  logits, h, projected = jax.jit(
      lambda z: (model(z), model.features(z), model.project(model.features(z))))(
          jnp.asarray(tokens))
  assert logits.dtype == jnp.float32 and logits.shape == (2, LENGTH, VOCAB)
  assert h.shape == (2, LENGTH, D_MODEL)
  assert np.abs(expected).max() > 1.0     # the check is not vacuous
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(projected), np.asarray(logits), atol=1e-6)


def test_from_hf_reads_released_fields():
  cfg = LLaDAConfig.from_hf(released_config(n_kv_heads=None, mlp_hidden_size=None,
                                            mlp_ratio=2))
  assert (cfg.vocab_size, cfg.n_kv_heads, cfg.mlp_hidden_size) == (VOCAB, HEADS, 2 * D_MODEL)
  assert (cfg.mask_id, cfg.rope_theta, cfg.param_dtype, cfg.dtype) == (
      MASK_ID, 500_000.0, "bfloat16", "bfloat16")
  assert LLaDAConfig.from_hf(released_config(), dtype="float32").param_dtype == "float32"
  assert LLaDAConfig.from_hf(released_config(multi_query_attention=True,
                                             n_kv_heads=None)).n_kv_heads == 1
  without = {k: v for k, v in released_config().items() if k not in ("embedding_size",
                                                                     "torch_dtype")}
  assert LLaDAConfig.from_hf(without).vocab_size == 50_304      # the reference's default
  null = released_config(embedding_size=None, vocab_size=VOCAB + 2)
  assert LLaDAConfig.from_hf(null).vocab_size == VOCAB + 2         # null: the vocabulary
  assert LLaDAConfig.from_hf(without | {"dtype": "float16"}).dtype == "float16"


@pytest.mark.parametrize("field, value", [("include_bias", True), ("block_type", "sequential"),
                                          ("attention_layer_norm", True),
                                          ("layer_norm_type", "gemma_rms")])
def test_from_hf_refuses_unsupported_variants(field, value):
  with pytest.raises(ValueError, match=f"{field}={value!r} is not supported"):
    LLaDAConfig.from_hf(released_config(**{field: value}))


def test_config_checks_name_the_field():
  with pytest.raises(ValueError, match="n_kv_heads must divide n_heads=4, got 3"):
    LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match=r"mask_id must be in \[0, 40\)"):
    LLaDAConfig(vocab_size=40, mask_id=40)


def test_bfloat16_loading_keeps_bfloat16(tmp_path):
  config = CONFIGS["multi_head"]
  folder = write_folder(tmp_path / "bf16", config, released_tensors(config),
                        dtype=ml_dtypes.bfloat16)
  model = load_llada(folder)
  assert model.cfg.param_dtype == model.cfg.dtype == "bfloat16"
  kinds = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert kinds == {jnp.dtype(jnp.bfloat16)}
  stored = SafetensorsFile(folder / "model-00001-of-00002.safetensors")
  np.testing.assert_array_equal(
      np.asarray(model.blocks[0].q_proj.kernel[...]),
      np.asarray(stored["model.transformer.blocks.0.q_proj.weight"]).T)
  tokens = tokens_for()
  logits = jax.jit(lambda z: model(z))(jnp.asarray(tokens))
  assert logits.dtype == jnp.float32
  rounded = {k: v.astype(ml_dtypes.bfloat16) for k, v in released_tensors(config).items()}
  expected = reference_logits(config, rounded, tokens)
  error = np.abs(np.asarray(logits) - expected).max() / np.abs(expected).max()
  assert error < 0.05, error   # bfloat16 activations (8-bit mantissa): measured 0.018
  assert load_llada(folder, dtype="float32").blocks[0].q_proj.kernel[...].dtype == jnp.float32


def test_mesh_loading_shards_the_matrices(folders):
  folder, config = folders["grouped_query_tied"]
  mesh = jax.make_mesh((1, 2), ("data", "model"), devices=jax.devices()[:2],
                       axis_types=(AxisType.Auto, AxisType.Auto))
  model = load_llada(folder, dtype="float32", mesh=mesh)
  block = model.blocks[0]
  assert block.q_proj.kernel[...].sharding.spec == P(None, "model")
  assert block.ff_out.kernel[...].sharding.spec == P("model", None)
  assert model.ln_f.weight[...].sharding.spec == P()
  tokens = tokens_for()
  np.testing.assert_allclose(np.asarray(jax.jit(lambda z: model(z))(jnp.asarray(tokens))),
                             reference_logits(config, released_tensors(config), tokens),
                             rtol=1e-4, atol=1e-4)
  explicit = jax.make_mesh((1, 2), ("data", "model"), devices=jax.devices()[:2],
                           axis_types=(AxisType.Explicit, AxisType.Explicit))
  with pytest.raises(ValueError, match="mesh axes must be AxisType.Auto"):
    load_llada(folder, mesh=explicit)


def test_sample_runs_on_the_split_denoiser(folders):
  folder, _ = folders["multi_head"]
  den = as_denoiser(load_llada(folder, dtype="float32"))
  assert den.is_split and not den.reads_t and den.vocab_size == VOCAB
  z, t = jnp.asarray(tokens_for()), jnp.full((2,), 0.5, jnp.float32)
  split, whole = jax.jit(lambda d, z, t: (d.head(d.features(z, t), t), d(z, t)))(den, z, t)
  np.testing.assert_allclose(np.asarray(split), np.asarray(whole), atol=1e-6)
  assert as_denoiser(load_llada(folder, dtype="float32")).apply == den.apply
  cfg = remdm_jax.SamplerConfig(num_steps=4)
  out = remdm_jax.sample(jax.random.key(0), den, cfg, batch_size=2, seq_len=LENGTH,
                         mask_id=MASK_ID)
  assert out.shape == (2, LENGTH) and out.dtype == jnp.int32
  assert ((np.asarray(out) >= 0) & (np.asarray(out) < VOCAB)).all()
  assert not (np.asarray(out) == MASK_ID).any()
  with pytest.raises(ValueError, match="mask id"):
    remdm_jax.sample(jax.random.key(0), den, cfg, batch_size=2, seq_len=LENGTH, mask_id=0)


def _break(folder, kind):
  """Damages a copy of a good folder in one way; returns what the message must name."""
  index_path = folder / "model.safetensors.index.json"
  index = json.loads(index_path.read_text())
  shard2 = folder / "model-00002-of-00002.safetensors"
  if kind == "missing shard":
    shard2.unlink()
    return ["model-00002-of-00002.safetensors", "missing shard"]
  if kind == "missing config":
    (folder / "config.json").unlink()
    return ["config.json", "no such"]
  if kind == "missing index":
    index_path.unlink()
    return ["model.safetensors.index.json", "no such"]
  stored = SafetensorsFile(shard2)
  tensors = {k: np.array(stored[k]) for k in stored.tensors}
  key = "model.transformer.blocks.1.k_proj.weight"
  if kind == "wrong shape":
    tensors[key] = tensors[key][:, :-1]
    expected = ["blocks.1.k_proj.weight", f"shape [{D_MODEL}, {D_MODEL - 1}]",
                f"expected [{D_MODEL}, {D_MODEL}]"]
  elif kind == "unknown key":
    key = "model.transformer.blocks.1.q_proj.bias"
    tensors[key] = np.zeros((D_MODEL,), np.float32)
    index["weight_map"][key] = shard2.name
    expected = [key, "unknown tensor"]
  else:   # missing key
    del tensors[key], index["weight_map"][key]
    expected = [key, "missing tensor"]
  write_safetensors(shard2, tensors)
  index_path.write_text(json.dumps(index))
  return expected


@pytest.mark.parametrize("kind", ["missing shard", "wrong shape", "unknown key", "missing key",
                                  "missing config", "missing index"])
def test_broken_folder_gives_one_clear_line(tmp_path, kind):
  config = CONFIGS["multi_head"]
  folder = write_folder(tmp_path / "broken", config, released_tensors(config))
  expected = _break(folder, kind)
  with pytest.raises(ValueError) as err:
    load_llada(folder)
  message = str(err.value)
  assert "\n" not in message
  for part in expected:
    assert part in message, (part, message)


def test_symlinked_shards_load_as_the_hugging_face_cache_lays_them_out(tmp_path):
  """A snapshot's shards are links into blobs/ outside the snapshot folder: a plain name in
  the index, so allowed, and the weights equal the folder's own."""
  config = CONFIGS["multi_head"]
  tensors = released_tensors(config)
  folder = write_folder(tmp_path / "snapshot", config, tensors)
  (tmp_path / "blobs").mkdir()
  for shard in folder.glob("*.safetensors"):
    blob = tmp_path / "blobs" / shard.name
    shard.rename(blob)
    shard.symlink_to(blob)
  model = load_llada(folder, dtype="float32")
  np.testing.assert_array_equal(np.asarray(model.wte.embedding[...]),
                                tensors["model.transformer.wte.weight"].astype(np.float32))


def test_safetensors_round_trip_and_corruption(tmp_path):
  rng = np.random.default_rng(1)
  tensors = {"f32": rng.standard_normal((3, 4)).astype(np.float32),
             "f16": rng.standard_normal((5,)).astype(np.float16),
             "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
             "i64": np.arange(7, dtype=np.int64), "i32": np.arange(6, dtype=np.int32).reshape(2, 3),
             "empty": np.zeros((0, 3), np.float32)}
  path = tmp_path / "t.safetensors"
  write_safetensors(path, tensors, metadata={"format": "pt"})
  stored = SafetensorsFile(path)
  assert stored.metadata == {"format": "pt"}
  for name, value in tensors.items():
    assert stored[name].dtype == value.dtype and stored[name].shape == value.shape
    np.testing.assert_array_equal(np.asarray(stored[name]), value)
  assert isinstance(stored["f32"], np.memmap)
  path.write_bytes(path.read_bytes()[:-4])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    read_header(path)
  path.write_bytes(b"\x00" * 3)
  with pytest.raises(ValueError, match="not a safetensors file"):
    read_header(path)


def test_denoiser_output_dtype_under_jit():
  """Traced abstractly: a bfloat16 model's trunk is bfloat16, its logits float32."""
  cfg = LLaDAConfig.from_hf(released_config(), dtype="bfloat16")
  den = as_denoiser(nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(0))))
  z, t = jnp.zeros((1, LENGTH), jnp.int32), jnp.ones((1,), jnp.float32)
  call = jax.jit(lambda d, z, t: (d(z, t), d.features(z, t)))
  logits, h = jax.eval_shape(call, den, z, t)
  assert (logits.dtype, h.dtype) == (jnp.float32, jnp.bfloat16)
  assert logits.shape == (1, LENGTH, VOCAB)
  with pytest.raises(ValueError, match="max_sequence_length=16, got 17"):
    jax.eval_shape(call, den, jnp.zeros((1, 17), jnp.int32), t)
