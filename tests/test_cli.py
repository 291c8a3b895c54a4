"""The flag parser and the remdm-train error path."""

import json

import pytest

from remdm_jax import cli, jobs, training


def test_flags_convert_by_field_type_and_config_file_applies_first(tmp_path):
  config = tmp_path / "c.json"
  config.write_text(json.dumps({"train": {"steps": 5, "eta": 0.3}}))
  parsed, rest = cli.parse_sections(
      [f"--config={config}", "--train.steps=7", "--model.causal=true", "--workdir=x",
       "--data.source_dir=none"], cli.TRAIN_DEFAULTS)
  assert parsed["train"].steps == 7 and parsed["train"].eta == 0.3
  assert parsed["model"].causal is True and parsed["data"].source_dir is None
  assert isinstance(parsed["train"], training.TrainConfig) and rest == ["--workdir=x"]


@pytest.mark.parametrize("argv,match", [
    (["--train.bogus=1"], "unknown key train.bogus; valid keys: batch_size,"),
    (["--nope.x=1"], "unknown section 'nope'"),
    (["--train.steps=many"], "--train.steps: invalid literal"),
    (["--model.causal=maybe"], "takes true or false"),
    (["--train.steps"], "needs a value"),
])
def test_bad_flags(argv, match):
  with pytest.raises(cli.UsageError, match=match):
    cli.parse_sections(argv, cli.TRAIN_DEFAULTS)


def test_train_main_reports_one_line_and_exit_2(capsys, tmp_path):
  assert cli.train_main(["--workdir=" + str(tmp_path), "--train.eta=-1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: eta must be in") and err.count("\n") == 1
  assert cli.train_main(["--train.steps=3"]) == 2
  assert "exactly one --workdir" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A byte-level model folder trained for two steps."""
  import numpy as np
  from remdm_jax import data
  from remdm_jax.models import DiTConfig
  workdir = tmp_path_factory.mktemp("tiny")
  rows = np.random.default_rng(0).integers(0, 256, (16, 24)).astype(np.int32)
  model = DiTConfig(vocab_size=259, hidden=16, heads=2, blocks=1, cond_dim=8, max_length=24)
  cfg = training.TrainConfig(batch_size=8, steps=2, eval_every=0, save_every=2)
  training.train(model, cfg, data.BatchStream(rows, 8, 0), None, 258, workdir, record={},
                 progress=False, tokenizer="bytes")
  return workdir / "model"


def test_sample_cli_writes_reproducible_records(tiny_model, tmp_path, capsys):
  argv = [f"--job.model={tiny_model}", "--job.num_samples=5", "--job.batch_size=8",
          "--sampler.num_steps=8", "--job.prompt=To be", "--job.seed=3"]
  for name in ("a", "b"):
    assert cli.sample_main(argv + [f"--job.out={tmp_path / name}"]) == 0
  first = jobs.merge(tmp_path / "a")
  assert (tmp_path / "a" / "samples.jsonl").read_text() == \
      jobs.shard_path(tmp_path / "a", 0, 5).read_text()
  assert jobs.merge(tmp_path / "b") == first
  assert [r["index"] for r in first] == list(range(5))
  assert all(r["text"].startswith("To be") and r["ids"][0] == 256 for r in first)
  assert first[0]["settings"]["strategy"] == "loop" and "--- sample 4 ---" in \
      capsys.readouterr().out


@pytest.mark.parametrize("flag,match", [
    ("--sampler.strategy=magic", "unknown strategy 'magic'"),
    ("--sampler.eta=0.5", r"eta must be in \[0, \(1 - alpha_on\) / alpha_on\]"),
    ("--job.prompt=" + "x" * 40, "prompt needs 41 positions"),
    ("--job.seq_len=99", "seq_len must be <= the model's max_length 24"),
])
def test_sample_cli_bad_input_exit_2(flag, match, tiny_model, capsys):
  assert cli.sample_main([f"--job.model={tiny_model}", flag]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and __import__("re").search(match, err)


def test_sample_cli_not_a_checkpoint(tmp_path, capsys):
  assert cli.sample_main([f"--job.model={tmp_path}"]) == 2
  assert "is not a remdm_jax model folder" in capsys.readouterr().err
