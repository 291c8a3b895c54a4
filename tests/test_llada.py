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
from references.llada import (D_MODEL, HEADS, LENGTH, MASK_ID, VOCAB, reference_logits,
                              released_config, released_tensors, write_folder)


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
