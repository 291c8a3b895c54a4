"""The model-family registry: a family registered from outside the package is found by
`load_model`, `as_denoiser`, `get_tokenizer` and the sampling job; unknown folders and models,
and a second family under a taken name, are refused in one line."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import remdm_jax
from remdm_jax import families
from remdm_jax.jobs.sample_job import SHIPPED_MODEL, load_sampling_model
from remdm_jax.models import as_denoiser
from remdm_jax.text.tokenizers import get_tokenizer


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  vocab_size: int   # the letters and the mask id
  mask_id: int


class ToyModel:
  """Every position's logits are one table `[V]` float32."""

  def __init__(self, logits):
    self.logits = jnp.asarray(logits, jnp.float32)                        # [V]
    self.cfg = ToyConfig(vocab_size=len(logits), mask_id=len(logits) - 1)


def toy_apply(logits, z, t):
  """`(params [V], z [B, L] int32, t [B]) -> [B, L, V]`."""
  del t
  return jnp.broadcast_to(logits, z.shape + logits.shape)                 # [B, L, V]


class Letters:
  """"ab" as ids 0 and 1, then BOS = EOS 2 and the mask 3."""

  vocab_size, bos_id, eos_id, mask_id = 4, 2, 2, 3

  def encode(self, text):
    return ["ab".index(c) for c in text]

  def decode(self, ids):
    return "".join("ab"[i] for i in np.asarray(ids).tolist() if i < 2)


@families.register
class ToyFamily(families.Family):
  name = "toy-test"
  model_types = (ToyModel,)

  def recognises(self, folder):
    return (folder / "toy.json").is_file()

  def load(self, folder, *, dtype=None, mesh=None):
    del dtype, mesh   # one small float32 table, replicated by whoever samples it
    return ToyModel(json.loads((folder / "toy.json").read_text())["logits"])

  def as_denoiser(self, model, schedule=None, *, label=None):
    return remdm_jax.Denoiser(toy_apply, params=model.logits, reads_t=False,
                              vocab_size=model.cfg.vocab_size)

  def tokenizer_name(self, folder):
    return str(folder)

  def tokenizer(self, folder):
    return Letters()

  def max_length(self, model):
    return 8


@pytest.fixture
def toy_folder(tmp_path):
  folder = tmp_path / "toy"
  folder.mkdir()
  (folder / "toy.json").write_text(json.dumps({"logits": [0.0, 30.0, 0.0, -30.0]}))
  return folder


def test_a_registered_family_loads_samples_and_tokenizes(toy_folder):
  assert families.names()[:2] == ["dit", "llada"] and "toy-test" in families.names()
  model = remdm_jax.load_model(toy_folder)
  assert isinstance(model, ToyModel) and families.for_model(model) is families.get("toy-test")
  den = as_denoiser(model)
  tokens = remdm_jax.sample(jax.random.key(0), den, remdm_jax.sampler_config("mdlm"),
                            batch_size=2, seq_len=5, mask_id=model.cfg.mask_id)
  assert tokens.dtype == jnp.int32
  tok = get_tokenizer(str(toy_folder))
  assert isinstance(tok, Letters) and tok.decode(tokens[0]) == "bbbbb"   # the table's mode


def test_the_sampling_job_loads_a_registered_family(toy_folder):
  loaded = load_sampling_model(toy_folder)
  assert isinstance(loaded.model, ToyModel) and isinstance(loaded.tokenizer, Letters)
  assert (loaded.tokenizer_name, loaded.max_length) == (str(toy_folder), 8)


def test_the_built_in_families_are_found():
  assert families.find(SHIPPED_MODEL) is families.get("dit")
  assert get_tokenizer(str(SHIPPED_MODEL)).vocab_size == 259   # the recorded "bytes"


def test_a_dit_folder_whose_tokenizer_is_itself(tmp_path):
  """A DiT folder that records itself as its tokenizer and holds `tokenizer.json` reads those
  files (the family lookup does not ask the family again)."""
  pytest.importorskip("tokenizers")
  from flax import nnx
  from references.folders import write_tokenizer_folder
  from remdm_jax.models import DiT, DiTConfig
  from remdm_jax.text.hf_tokenizer import HFTokenizer
  folder = tmp_path / "dit"
  model = DiT(DiTConfig(vocab_size=301, hidden=16, heads=2, blocks=1, cond_dim=8,
                        max_length=8), rngs=nnx.Rngs(0))
  remdm_jax.save_model(model, folder, tokenizer=str(folder))
  write_tokenizer_folder(folder)
  assert families.find(folder) is families.get("dit")
  assert isinstance(get_tokenizer(str(folder)), HFTokenizer)


def test_an_unknown_folder_names_the_families(tmp_path):
  with pytest.raises(ValueError) as err:
    remdm_jax.load_model(tmp_path)
  message = str(err.value)
  assert "is not a remdm_jax model folder" in message and "\n" not in message
  assert "['dit', 'llada'" in message and "'toy-test'" in message


def test_refusals():
  with pytest.raises(ValueError, match="a family named 'toy-test' is already registered "
                                       r"\(ToyFamily\); choose another name"):
    families.register(ToyFamily())
  with pytest.raises(TypeError, match="family must be a remdm_jax.families.Family, got str"):
    families.register("toy")
  with pytest.raises(ValueError, match=r"unknown model family 'nope'; choose from \['dit'"):
    families.get("nope")
  with pytest.raises(TypeError, match=r"registered family \(dit: DiT, NoisyClassifier; llada: "
                                      r"LLaDA;.* toy-test: ToyModel.*\), got int"):
    as_denoiser(3)


def test_the_families_sharding_rules():
  """A DiT folder read onto a 2-way "model" axis is split by the DiT rules, as `place` splits
  a model already built; LLaDA's rule keeps whole heads."""
  from flax import nnx
  from jax.sharding import PartitionSpec as P
  from remdm_jax.parallel import distributed
  mesh = distributed.make_mesh(model_axis=2)
  dit = families.get("dit")
  model = remdm_jax.load_model(SHIPPED_MODEL, mesh=mesh)
  kernel = model.blocks[0].attn_qkv.kernel
  assert kernel.sharding.spec == P(None, "model") and kernel.sharding.mesh == mesh
  built = remdm_jax.load_model(SHIPPED_MODEL)
  dit.place(built, mesh)
  same = jax.tree.map(lambda a, b: a.sharding == b.sharding and bool((a == b).all()),
                      nnx.state(built), nnx.state(model))
  assert all(jax.tree.leaves(same))
  llada, cfg = families.get("llada"), dataclasses.make_dataclass("C", ["head_dim"])(16)
  assert llada.param_spec(cfg, "blocks/0/q_proj/kernel", (64, 64), 2) == P(None, "model")
  assert llada.param_spec(cfg, "blocks/0/q_proj/kernel", (64, 64), 8) == P()   # half heads
