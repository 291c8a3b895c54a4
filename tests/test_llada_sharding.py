"""LLaDA over a device mesh: the tensor-parallel rules, data- and tensor-parallel sampling
against one device, and compiling the sampler from shapes alone (8 fake CPU devices)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import remdm_jax
from remdm_jax.models.llada import LLaDA, LLaDAConfig, as_denoiser
from remdm_jax.weights.llada_io import llada_shardings, load_llada, param_sharding
from references.llada import MASK_ID, VOCAB, released_config, released_tensors, write_folder

# Wider than references.llada's model, so 4 devices still hold whole heads (Dh = 16, 4 heads).
D_MODEL, HEADS, MLP, LAYERS, LENGTH, BATCH = 64, 4, 128, 2, 32, 8
CONFIG = released_config(d_model=D_MODEL, n_heads=HEADS, n_kv_heads=HEADS,
                         mlp_hidden_size=MLP, n_layers=LAYERS, max_sequence_length=LENGTH)
SAMPLER = remdm_jax.SamplerConfig(num_steps=8)


def mesh_of(data: int, model: int):
  return jax.make_mesh((data, model), ("data", "model"), devices=jax.devices()[:data * model],
                       axis_types=(AxisType.Auto, AxisType.Auto))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return write_folder(tmp_path_factory.mktemp("llada_mesh") / "m", CONFIG,
                      released_tensors(CONFIG, seed=3))


def tokens_for(seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)


def sample_on(model, mesh, key, config=SAMPLER, prompt=None):
  """Tokens of a sampler (the default one), batch split over the mesh's "data" axis."""
  den = as_denoiser(model)
  sampler = remdm_jax.make_sampler(den, config, batch_size=BATCH, seq_len=LENGTH,
                                   mask_id=MASK_ID,
                                   batch_sharding=NamedSharding(mesh, P("data")))
  return np.asarray(sampler(key, prompt=prompt))


def placed(model, sharding):
  graphdef, state = nnx.split(model)
  return graphdef, jax.device_put(state, sharding)


def collectives(compiled_text: str) -> dict[str, int]:
  return {op: len(re.findall(rf"= \S+ {op}(?:-start)?\(", compiled_text))
          for op in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all",
                     "collective-permute")}


def test_rules_keep_whole_heads():
  mesh = mesh_of(1, 8)
  q = ("blocks", 0, "q_proj", "kernel")
  out = ("blocks", 0, "attn_out", "kernel")
  assert param_sharding(mesh, q, (4096, 4096), 128).spec == P(None, "model")   # 4 heads each
  assert param_sharding(mesh, out, (4096, 4096), 128).spec == P("model", None)
  assert param_sharding(mesh, q, (64, 64), 16).spec == P()      # 8 columns: half a head
  assert param_sharding(mesh, out, (64, 64), 16).spec == P()
  mlp = ("blocks", 0, "ff_proj", "kernel")
  assert param_sharding(mesh, mlp, (64, 128), 16).spec == P(None, "model")  # not heads
  assert param_sharding(mesh, ("wte", "embedding"), (40, 64), 16).spec == P("model", None)
  assert param_sharding(mesh, ("ln_f", "weight"), (64,), 16).spec == P()
  assert param_sharding(mesh_of(8, 1), q, (4096, 4096), 128).spec == P()


def test_forward_has_one_all_reduce_per_row_parallel_layer(folder):
  """Model axis 2: the vocabulary-parallel embedding and each block's two row-parallel
  projections all-reduce `[B, L, D]`; the attention needs nothing (whole heads), and
  nothing is all-gathered. Printed for the record."""
  model = load_llada(folder, dtype="float32", mesh=mesh_of(1, 2))
  graphdef, state = nnx.split(model)
  trunk = jax.jit(lambda s, z: nnx.merge(graphdef, s).features(z))
  counts = collectives(trunk.lower(state, tokens_for()).compile().as_text())
  print("collectives in the forward, model axis 2:", counts)
  assert counts == {"all-gather": 0, "all-reduce": 1 + 2 * LAYERS, "reduce-scatter": 0,
                    "all-to-all": 0, "collective-permute": 0}


@pytest.mark.parametrize("devices", [8, pytest.param(2, marks=pytest.mark.slow),
                                     pytest.param(4, marks=pytest.mark.slow)])
def test_data_parallel_tokens_identical_to_one_device(folder, devices):
  """The batch split over 2, 4 or 8 devices gives one device's tokens, bit for bit (8 in the
  default run, 2 and 4 with -m slow)."""
  model = load_llada(folder, dtype="float32")
  key = jax.random.key(11)
  runs = {}
  for n in (1, devices):
    mesh = mesh_of(n, 1)
    replicated = nnx.merge(*placed(model, NamedSharding(mesh, P())))
    runs[n] = sample_on(replicated, mesh, key)
  assert not (runs[1] == MASK_ID).any()
  np.testing.assert_array_equal(runs[devices], runs[1], err_msg=f"{devices} devices")


@pytest.mark.slow
def test_block_decoding_with_dual_cache_identical_on_8_devices(folder):
  """Block decoding (temperature 1, random remasking, ReMDM-LLaDA steps, dual cache) over
  prompts of different lengths: the batch split over 8 devices gives one device's tokens."""
  model = load_llada(folder, dtype="float32")
  config = remdm_jax.sampler_config("llada", num_steps=4, block_length=8, temperature=1.0,
                                    remasking="random", remdm_number=1, remdm_start=2,
                                    kv_cache="dual")
  prompt = np.full((BATCH, LENGTH), MASK_ID, np.int32)
  for b in range(BATCH):
    prompt[b, :2 + b] = tokens_for(b)[0, :2 + b] % MASK_ID
  runs = {}
  for n in (1, 8):
    mesh = mesh_of(n, 1)
    replicated = nnx.merge(*placed(model, NamedSharding(mesh, P())))
    runs[n] = sample_on(replicated, mesh, jax.random.key(4), config, prompt)
  assert not (runs[1] == MASK_ID).any()
  np.testing.assert_array_equal(runs[8], runs[1])


@pytest.mark.parametrize("model_axis", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_tensor_parallel_logits_and_tokens_match_one_device(folder, model_axis):
  """Tensor parallelism changes only the float32 summation order of the row-parallel
  matmuls: logits within 2e-5 of one device's (measured 8.2e-6 for 2 devices and 6.6e-6 for
  4, the largest logit being 6.2). Tokens then agree except where a uniform falls within
  that difference of a cumulative probability; with the fixed key, at least 95% of the
  `[8, 32]` tokens must agree (measured: all of them on both meshes)."""
  single = load_llada(folder, dtype="float32")
  sharded = load_llada(folder, dtype="float32", mesh=mesh_of(1, model_axis))
  assert sharded.blocks[0].q_proj.kernel[...].sharding.spec == P(None, "model")
  tokens = jnp.asarray(tokens_for(1))
  forward = jax.jit(lambda m, z: m(z))
  expected = np.asarray(forward(single, tokens))
  logits = np.asarray(forward(sharded, tokens))
  difference = np.abs(logits - expected).max()
  print(f"model axis {model_axis}: largest logit difference {difference:.3g} "
        f"(largest logit {np.abs(expected).max():.3g})")
  assert np.abs(expected).max() > 1.0
  assert difference < 2e-5
  key = jax.random.key(5)
  agree = (sample_on(sharded, mesh_of(1, model_axis), key) ==
           sample_on(single, mesh_of(1, 1), key)).mean()
  print(f"model axis {model_axis}: token agreement {agree:.4f}")
  assert agree >= 0.95


def test_sampler_compiles_from_shapes_then_runs_real_weights(folder):
  """`Sampler.compile` with a key struct and `ShapeDtypeStruct` parameters (with their
  shardings) on a data 2 x model 2 mesh; the executable then runs the loaded weights and
  gives the tokens of a sampler compiled from them."""
  mesh = mesh_of(2, 2)
  cfg = LLaDAConfig.from_hf(CONFIG, dtype="float32")
  den = as_denoiser(nnx.eval_shape(lambda: LLaDA(cfg, rngs=nnx.Rngs(0))))
  shapes = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        den.params, llada_shardings(den.params, mesh, cfg))
  make = lambda: remdm_jax.make_sampler(den, SAMPLER, batch_size=BATCH, seq_len=LENGTH,
                                        mask_id=MASK_ID,
                                        batch_sharding=NamedSharding(mesh, P("data")))
  sampler = make()
  with pytest.raises(ValueError, match="not compiled ahead of time"):
    sampler.compiled()
  with pytest.raises(ValueError, match="abstract key must be a typed key"):
    sampler.compile(jax.ShapeDtypeStruct((2,), jnp.uint32), shapes)
  sampler.compile(jax.eval_shape(jax.random.key, 0), shapes)
  stats = sampler.compiled().memory_analysis()
  assert stats.argument_size_in_bytes > 0
  params = as_denoiser(load_llada(folder, dtype="float32", mesh=mesh)).params
  key = jax.random.key(2)
  tokens = sampler(key, params)
  assert tokens.dtype == jnp.int32 and tokens.shape == (BATCH, LENGTH)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(make()(key, params)))
