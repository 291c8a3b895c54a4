"""The flag parser and the remdm-train error path."""

import json

import pytest

from remdm_jax import cli, training


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
