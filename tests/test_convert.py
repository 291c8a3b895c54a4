"""Weight import and model folders: CLI round trip, EMA order, one-line errors."""

import collections
import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import remdm_jax
from remdm_jax import cli
from remdm_jax.weights import convert
from remdm_jax.weights.checkpoint import load_model, save_model

from references.dit import SMALL, numpy_forward, released_tensors


def _released_folder(path, cfg=SMALL, tensors=None):
  path.mkdir()
  hf = {"hidden_dim": cfg.hidden, "cond_dim": cfg.cond_dim, "n_blocks": cfg.blocks,
        "n_heads": cfg.heads, "vocab_size": cfg.vocab_size, "model_length": cfg.max_length,
        "time_conditioning": cfg.time_conditioning}
  (path / "config.json").write_text(json.dumps(hf))
  save_file(tensors if tensors is not None else released_tensors(cfg),
            str(path / "model.safetensors"))
  return path


def test_cli_round_trip_matches_numpy(tmp_path, capsys):
  src = _released_folder(tmp_path / "release")
  assert cli.convert_main([str(src), str(tmp_path / "converted")]) == 0
  model = load_model(tmp_path / "converted")
  tokens = np.arange(20).reshape(2, 10) % SMALL.vocab_size
  sigma = np.array([0.0, 1.5])
  got = np.asarray(model(jnp.asarray(tokens, jnp.int32), jnp.asarray(sigma, jnp.float32)))
  want = numpy_forward(released_tensors(SMALL), tokens, sigma, SMALL)
  assert np.max(np.abs(got - want)) < 1e-4 * np.max(np.abs(want))
  assert "wrote" in capsys.readouterr().out


def _one_error_line(capsys, argv):
  assert cli.convert_main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and err.startswith("error: ")
  return err


def test_bad_checkpoints_give_one_line(tmp_path, capsys):
  tensors = released_tensors(SMALL)
  tensors["backbone.blocks.1.attn_out.weight"] = np.zeros((4, 4), np.float32)
  src = _released_folder(tmp_path / "shape", tensors=tensors)
  err = _one_error_line(capsys, [str(src), str(tmp_path / "a")])
  assert "backbone.blocks.1.attn_out.weight has shape [4, 4], the config needs [32, 32]" in err
  tensors = released_tensors(SMALL)
  del tensors["backbone.output_layer.linear.bias"]
  src = _released_folder(tmp_path / "missing", tensors=tensors)
  assert "missing ['output_layer.linear.bias']" in _one_error_line(
      capsys, [str(src), str(tmp_path / "b")])
  src = _released_folder(tmp_path / "vocab", tensors=released_tensors(
      remdm_jax.models.DiTConfig(**{**SMALL.__dict__, "vocab_size": 17})))
  assert "vocab_embed.embedding has shape [17, 32], the config needs [13, 32]" in \
      _one_error_line(capsys, [str(src), str(tmp_path / "c")])
  tensors = released_tensors(SMALL)
  tensors["backbone.rotary_emb.inv_freq"] *= 2
  src = _released_folder(tmp_path / "rotary", tensors=tensors)
  assert "inv_freq (float32) does not match" in _one_error_line(capsys, [str(src), str(tmp_path / "d")])
  assert "is not a released MDLM folder" in _one_error_line(
      capsys, [str(tmp_path), str(tmp_path / "e")])
  for bad in ("a", "b", "c", "d", "e"):
    assert not (tmp_path / bad).exists()


def test_ema_tensors_follow_state_dict_order():
  tensors = released_tensors(SMALL)
  state_dict = collections.OrderedDict(tensors)
  state_dict["noise.sigma_min"] = np.zeros(())
  names = [k for k in state_dict if k.startswith("backbone.") and "inv_freq" not in k]
  shadow = [tensors[k] + 1.0 for k in names]
  got = convert.ema_tensors({"state_dict": state_dict, "ema": {"shadow_params": shadow}})
  assert list(got) == names
  np.testing.assert_array_equal(got[names[3]], tensors[names[3]] + 1.0)
  with pytest.raises(ValueError, match="EMA tensor for backbone.vocab_embed.embedding"):
    convert.ema_tensors({"state_dict": state_dict, "ema": {"shadow_params": shadow[::-1]}})
  with pytest.raises(ValueError, match="no state_dict or ema.shadow_params"):
    convert.ema_tensors({"state_dict": state_dict})


def test_model_folder_errors(tmp_path):
  model = convert.convert_tensors(released_tensors(SMALL), SMALL)
  save_model(model, tmp_path / "m")
  with pytest.raises(ValueError, match="already holds a model"):
    save_model(model, tmp_path / "m")
  with pytest.raises(ValueError, match="is not a remdm_jax model folder"):
    load_model(tmp_path)


def test_sample_end_to_end_with_a_small_dit():
  import jax
  from flax import nnx
  from remdm_jax.models import as_denoiser
  model = convert.convert_tensors(released_tensors(SMALL), SMALL)
  graphdef, state = nnx.split(model)
  cfg = remdm_jax.sampler_config(strategy="loop", num_steps=16, eta=0.05, top_p=0.9)

  @jax.jit
  def run(key, state):
    return remdm_jax.sample(key, as_denoiser(nnx.merge(graphdef, state)), cfg, batch_size=4,
                            seq_len=12, mask_id=SMALL.vocab_size - 1)
  out = run(jax.random.key(0), state)
  assert out.shape == (4, 12) and out.dtype == jnp.int32
  assert int(out.max()) < SMALL.vocab_size - 1
  np.testing.assert_array_equal(np.asarray(out), np.asarray(run(jax.random.key(0), state)))


def test_lightning_ckpt_through_torch(tmp_path, capsys):
  """The `.ckpt` path end to end; needs torch (an optional dependency), skipped without it."""
  torch = pytest.importorskip("torch")
  tensors = released_tensors(SMALL)
  state_dict = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in tensors.items())
  names = [k for k in tensors if "inv_freq" not in k]
  shadow = [torch.from_numpy(tensors[k]) for k in names]
  torch.save({"state_dict": state_dict, "ema": {"shadow_params": shadow}},
             tmp_path / "mdlm.ckpt")
  folder = _released_folder(tmp_path / "release")
  assert cli.convert_main([str(tmp_path / "mdlm.ckpt"), str(tmp_path / "out"),
                           f"--convert.released_config={folder / 'config.json'}"]) == 0
  model = load_model(tmp_path / "out")
  tokens = np.arange(12).reshape(2, 6) % SMALL.vocab_size
  got = np.asarray(model(jnp.asarray(tokens, jnp.int32), jnp.zeros((2,), jnp.float32)))
  want = numpy_forward(tensors, tokens, np.zeros(2), SMALL)
  assert np.max(np.abs(got - want)) < 1e-4 * np.max(np.abs(want))


def test_float16_release_converts(tmp_path):
  """A float16 release (inv_freq rounded to float16) converts; the weights are widened."""
  half = {k: v.astype(np.float16) for k, v in released_tensors(SMALL).items()}
  head_dim = SMALL.hidden // SMALL.heads
  half["backbone.rotary_emb.inv_freq"] = (
      1.0 / 10_000.0 ** (np.arange(0, head_dim, 2) / head_dim)).astype(np.float16)
  src = _released_folder(tmp_path / "half", tensors=half)
  model = load_model(convert.convert(src, tmp_path / "out"))
  np.testing.assert_array_equal(np.asarray(model.vocab_embed.embedding[...]),
                                half["backbone.vocab_embed.embedding"].astype(np.float32))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_safetensors_is_one_line(damage, tmp_path, capsys):
  src = _released_folder(tmp_path / "release")
  weights = src / "model.safetensors"
  weights.write_bytes(b"" if damage == "empty" else weights.read_bytes()[:200])
  err = _one_error_line(capsys, [str(src), str(tmp_path / "d")])
  assert f"{weights}: cannot read the weights" in err


def test_destination_that_is_a_file_is_refused(tmp_path, capsys):
  src = _released_folder(tmp_path / "release")
  (tmp_path / "d").write_text("x")
  assert "d: is a file, expected a new model folder" in _one_error_line(
      capsys, [str(src), str(tmp_path / "d")])


def test_released_config_for_a_folder_source_is_refused(tmp_path, capsys):
  src = _released_folder(tmp_path / "release")
  err = _one_error_line(capsys, [str(src), str(tmp_path / "d"),
                                 f"--convert.released_config={src / 'config.json'}"])
  assert "--convert.released_config" in err and "only read for a Lightning .ckpt" in err
  assert str(src) in err and not (tmp_path / "d").exists()


def test_nonfinite_tensors_are_refused_unless_allowed(tmp_path, capsys):
  tensors = released_tensors(SMALL)
  tensors["backbone.blocks.0.mlp.0.bias"][[1, 5]] = [np.nan, np.inf]
  src = _released_folder(tmp_path / "release", tensors=tensors)
  err = _one_error_line(capsys, [str(src), str(tmp_path / "d")])
  size = tensors["backbone.blocks.0.mlp.0.bias"].size
  assert f"backbone.blocks.0.mlp.0.bias (2 of {size})" in err
  assert "--convert.allow_nonfinite=true" in err and not (tmp_path / "d").exists()
  assert cli.convert_main([str(src), str(tmp_path / "d"), "--convert.allow_nonfinite=true"]) == 0
  bias = np.asarray(load_model(tmp_path / "d").blocks[0].mlp_0.bias[...])
  assert np.isnan(bias[1]) and np.isinf(bias[5])


_FULL_DISK = """
import resource, signal, sys
from remdm_jax import cli
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails (EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
sys.argv[0] = "remdm-convert"
sys.exit(cli.convert_main())   # as the console script calls it: the command's own process
"""


def test_a_full_disk_is_one_line_with_nothing_left_behind(tmp_path):
  """Orbax's writer threads fail (a file size limit stands in for a full disk): one `error:`
  line naming the folder, no traceback from any thread, no temporary and no new folder."""
  import subprocess
  import sys
  src = _released_folder(tmp_path / "release")
  done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(src), str(tmp_path / "d")],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
  assert done.stderr.startswith(f"error: {tmp_path / 'd' / 'params'}: cannot write the model "
                                "parameters (File too large)")
  assert not (tmp_path / "d").exists()
