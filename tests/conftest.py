"""Shared fixtures: 8 fake CPU devices, the toy mixture's exact denoiser (the mixture itself is
in `references/mixture.py`), Shakespeare rows, a text folder and a tiny trained model."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")   # workers may share one GPU

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from references.mixture import (MASK_ID, MIXTURE_SEQS, MIXTURE_WEIGHTS,  # noqa: E402
                                oracle_denoiser)


def pytest_xdist_auto_num_workers(config):
  """`-n auto` (setup.cfg): one test process per core, at most 4 (the tests are mostly
  single-threaded XLA compiles; more processes mostly add JAX start-up and memory)."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 1)
  return min(cores, 4)


@pytest.fixture
def mixture():
  return oracle_denoiser(MIXTURE_SEQS, MIXTURE_WEIGHTS, MASK_ID + 1)


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory):
  """(train rows, validation rows) of the Shakespeare plays, byte-level, L = 64."""
  from remdm_jax.data import datasets as data
  from remdm_jax.text.tokenizers import ByteTokenizer
  root = tmp_path_factory.mktemp("shakespeare")
  cfg = data.DataConfig(dataset="shakespeare_plays", data_dir=str(root / "tfds"),
                        source_dir=str(root / "sdist"), seq_len=64)
  (root / "sdist").mkdir()
  return cfg.load_rows(ByteTokenizer())


@pytest.fixture
def text_folder(tmp_path):
  """A folder of 12 small text files (11 train, 1 validation)."""
  folder = tmp_path / "texts"
  folder.mkdir()
  rng = np.random.default_rng(0)
  words = ["the", "king", "queen", "sword", "crown", "night", "day", "love", "war", "peace"]
  for i in range(12):
    text = " ".join(rng.choice(words, 400)) + ".\n"
    (folder / f"doc{i:02d}.txt").write_text(text)
  return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
  """A byte-level model folder trained for two steps."""
  from remdm_jax.data import datasets as data
  from remdm_jax.training import loop as training
  from remdm_jax.models import DiTConfig
  workdir = tmp_path_factory.mktemp("tiny")
  rows = np.random.default_rng(0).integers(0, 256, (16, 24)).astype(np.int32)
  model = DiTConfig(vocab_size=259, hidden=16, heads=2, blocks=1, cond_dim=8, max_length=24)
  cfg = training.TrainConfig(batch_size=8, steps=2, eval_every=0, save_every=2)
  training.train(model, cfg, data.BatchStream(rows, 8, 0), None, 258, workdir,
                 progress=False, tokenizer="bytes")
  return workdir / "model"


@pytest.fixture
def load_script():
  """`load_script("train/task_ablation.py")`: a script of the repository as a module (its
  `_main` and helpers), without running it."""
  import importlib.util
  import pathlib

  def load(relative: str):
    path = pathlib.Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script
  return load
