"""Scale-out, for real on one machine: 2 CPU processes x 4 devices (gloo) against 1 x 8,
sampling jobs killed and rerun, and parameters sharded over a "model" mesh axis."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from remdm_jax import sampler_config, files, sample
from remdm_jax.parallel import distributed
from remdm_jax.jobs import shards
from remdm_jax.parallel import sharding
from remdm_jax.training import loop as training
from remdm_jax.models.dit import DiT, DiTConfig, as_denoiser

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _run_processes(argv: list[str], processes: int) -> None:
  """Runs `argv` as `processes` cooperating processes (4 devices each) or 1 x 8 devices."""
  if processes == 1:
    done = subprocess.run(argv, cwd=REPO, env=_env(8), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return
  port = _free_port()
  procs = [subprocess.Popen(argv + [f"--dist.coordinator_address=localhost:{port}",
                                    f"--dist.num_processes={processes}",
                                    f"--dist.process_id={i}"],
                            cwd=REPO, env=_env(4), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(processes)]
  try:
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A byte-level model folder (a few training steps: non-uniform logits)."""
  from remdm_jax.data import datasets as data
  workdir = tmp_path_factory.mktemp("tiny")
  rows = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.int32)
  model = DiTConfig(vocab_size=259, hidden=32, heads=4, blocks=2, cond_dim=16, max_length=32)
  cfg = training.TrainConfig(batch_size=8, steps=4, eval_every=0, save_every=4,
                             learning_rate=1e-2, warmup_steps=1)
  training.train(model, cfg, data.BatchStream(rows, 8, 0), None, 258, workdir,
                 progress=False, tokenizer="bytes")
  return workdir / "model"


def _sample_argv(model, out, num_samples=20, batch_size=8, steps=8, extra=()):
  return [sys.executable, str(REPO / "sample" / "main.py"), f"--job.model={model}",
          f"--job.out={out}", f"--job.num_samples={num_samples}",
          f"--job.batch_size={batch_size}", f"--sampler.num_steps={steps}", "--job.quiet=true",
          "--job.prompt=ab", *extra]


def _shard_bytes(directory: Path) -> dict:
  return {p.name: p.read_bytes() for p in sorted(directory.glob("samples-*.jsonl"))}


@pytest.mark.slow
def test_two_processes_sample_what_one_process_samples(tiny_model, tmp_path):
  """20 samples in batches of 8 (the last batch partly unused), with a prompt."""
  _run_processes(_sample_argv(tiny_model, tmp_path / "one"), 1)
  _run_processes(_sample_argv(tiny_model, tmp_path / "two"), 2)
  one, two = shards.merge(tmp_path / "one"), shards.merge(tmp_path / "two")
  assert [r["index"] for r in two] == list(range(20))
  assert [r["ids"] for r in one] == [r["ids"] for r in two]
  # each process wrote only its own rows: 4 of every 8
  assert sorted(_shard_bytes(tmp_path / "two"))[:2] == ["samples-000000000-000000004.jsonl",
                                                        "samples-000000004-000000008.jsonl"]
  assert len(_shard_bytes(tmp_path / "one")) == 3


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, text_folder):
  """Same losses (to float32 reduction order) and checkpoints readable by one process."""
  def argv(workdir):
    return [sys.executable, str(REPO / "train" / "main.py"), f"--workdir={workdir}",
            "--data.dataset=text_folder", f"--data.source_dir={text_folder}",
            f"--data.data_dir={tmp_path / 'tfds'}", "--data.seq_len=32", "--model.hidden=32",
            "--model.blocks=2", "--model.cond_dim=16", "--train.batch_size=16",
            "--train.steps=12", "--train.save_every=6", "--train.eval_every=6",
            "--train.log_every=2"]
  _run_processes(argv(tmp_path / "one"), 1)   # also prepares the dataset for both runs
  _run_processes(argv(tmp_path / "two"), 2)
  logs = [[json.loads(l) for l in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
          for run in ("one", "two")]
  assert [e["step"] for e in logs[1]] == [2, 4, 6, 8, 10, 12]
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose([e[key] for e in logs[0]], [e[key] for e in logs[1]],
                               rtol=1e-5)
  np.testing.assert_allclose(logs[0][-1]["valid_nelbo"], logs[1][-1]["valid_nelbo"],
                             rtol=1e-5)
  assert (tmp_path / "two" / "model" / "config.json").is_file()


def _wait_for_shards(directory: Path, count: int, proc) -> None:
  deadline = time.time() + TIMEOUT
  while time.time() < deadline and proc.poll() is None:
    if directory.is_dir() and len(list(directory.glob("samples-*.jsonl"))) >= count:
      return
    time.sleep(0.02)


@pytest.mark.slow
def test_killed_sampling_job_reruns_to_identical_shards(tiny_model, tmp_path):
  argv = lambda out: _sample_argv(tiny_model, out, num_samples=120, batch_size=4, steps=32)
  _run_processes(argv(tmp_path / "whole"), 1)
  proc = subprocess.Popen(argv(tmp_path / "split"), cwd=REPO, env=_env(8),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _wait_for_shards(tmp_path / "split", 3, proc)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait(timeout=60) == -9
  partial = _shard_bytes(tmp_path / "split")
  whole = _shard_bytes(tmp_path / "whole")
  assert 3 <= len(partial) < len(whole) == 30            # killed mid-way
  for name, content in partial.items():                  # never a partial file under a final name
    assert content == whole[name]
  _run_processes(argv(tmp_path / "split"), 1)
  assert _shard_bytes(tmp_path / "split") == whole
  assert not list((tmp_path / "split").glob(".samples-*"))  # temporaries cleaned up
  assert len(shards.merge(tmp_path / "split")) == 120


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused(tiny_model, tmp_path, capsys):
  from remdm_jax import cli
  base = [f"--job.model={tiny_model}", f"--job.out={tmp_path}", "--job.quiet=true",
          "--sampler.num_steps=4", "--job.num_samples=2", "--job.batch_size=8"]
  assert cli.sample_main(base) == 0
  assert cli.sample_main(base[:-1] + ["--job.batch_size=2"]) == 2
  assert "differs in ['batch_size']" in capsys.readouterr().err


def test_merge_reports_missing_samples(tmp_path):
  (tmp_path / shards.MANIFEST).write_text(json.dumps({"num_samples": 3}))
  files.write_atomic(shards.shard_path(tmp_path, 0, 2), shards.shard_text(
      [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}]))
  with pytest.raises(ValueError, match="1 of 3 samples missing"):
    shards.merge(tmp_path)


@pytest.mark.slow
def test_sharded_parameters_sample_like_replicated_ones():
  """A (data 2, model 4) mesh on 8 devices: the Megatron rules really split the weights,
  logits agree to float32 rounding and the sampled tokens are identical."""
  model = DiT(DiTConfig(vocab_size=259, hidden=64, heads=4, blocks=2, cond_dim=16,
                        max_length=24), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: x + 0.02 * jax.random.normal(jax.random.key(1), x.shape),
                       state)   # zero-initialised output layers would make logits trivial
  mesh = distributed.make_mesh(model_axis=4)
  sharded = sharding.shard_params(state, mesh)
  qkv = sharded["blocks"][0]["attn_qkv"]["kernel"][...]
  assert qkv.addressable_shards[0].data.shape == (64, 48)   # 192 output features / 4
  embed = sharded["vocab_embed"]["embedding"][...]
  assert embed.addressable_shards[0].data.shape == (259, 16)
  tokens = jax.random.randint(jax.random.key(2), (8, 24), 0, 259)
  forward = jax.jit(lambda s: nnx.merge(graphdef, s)(tokens, np.full((8,), 0.5, np.float32)))
  np.testing.assert_allclose(forward(sharded), forward(state), atol=1e-5)
  cfg = sampler_config(strategy="loop", num_steps=16, eta=0.02, top_p=0.9)
  run = jax.jit(lambda s: sample(jax.random.key(3), as_denoiser(nnx.merge(graphdef, s)), cfg,
                                 batch_size=8, seq_len=24, mask_id=258,
                                 batch_sharding=distributed.batch_sharding(mesh)))
  np.testing.assert_array_equal(run(sharded), run(state))


def test_rules_replicate_what_the_axis_does_not_divide():
  assert sharding.param_spec("output_linear/kernel", (30, 259), 4) == \
      jax.sharding.PartitionSpec()
  assert sharding.param_spec("output_linear/kernel", (32, 259), 4) == \
      jax.sharding.PartitionSpec("model", None)
  assert sharding.param_spec("norm_final/scale", (32,), 4) == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match="model_axis must be >= 1 and divide"):
    distributed.make_mesh(model_axis=3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(coordinator_address="h:1"),
     r"num_processes must be in \[1, inf\) with a coordinator_address, got 0"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2),
     r"process_id must be in \[0, 1\], got 2"),
    (dict(auto=True, coordinator_address="h:1"), "either auto=true or coordinator_address"),
    (dict(cpu_collectives="nccl"), "unknown cpu_collectives 'nccl'"),
])
def test_bad_distributed_config(kwargs, match):
  with pytest.raises(ValueError, match=match):
    distributed.DistributedConfig(**kwargs)
