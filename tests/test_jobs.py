"""Sampling jobs driven from Python (no argv): records, resume, progress, merge and scoring."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import remdm_jax
from remdm_jax import cli, sampler_config
from remdm_jax.jobs import sample_job as jobs
from remdm_jax.jobs import shards
from remdm_jax.weights.checkpoint import load_tokenizer_name, save_model
from remdm_jax.eval import metrics
from remdm_jax.models import DiT, DiTConfig, as_classifier, as_denoiser, as_evaluator
from remdm_jax.text.tokenizers import ByteTokenizer

SMALL = dict(hidden=16, heads=2, blocks=1, cond_dim=8, max_length=24)


@pytest.fixture(scope="module")
def causal_model(tmp_path_factory):
  """A random causal byte-level model folder (an evaluator)."""
  cfg = DiTConfig(vocab_size=259, causal=True, **SMALL)
  return save_model(DiT(cfg, rngs=nnx.Rngs(0)), tmp_path_factory.mktemp("ar") / "ar",
                    tokenizer="bytes")


@pytest.mark.slow
def test_job_returns_records_and_resumes_to_the_same_files(tiny_model, tmp_path):
  cfg = sampler_config("cap", eta=0.05, num_steps=6)
  job = jobs.SampleJob(model=str(tiny_model), num_samples=5, batch_size=2, seed=1,
                       out=str(tmp_path / "job"), prompt="ab")
  first = jobs.run_sampling_job(cfg, job, progress=False)
  assert [r["index"] for r in first.records] == [0, 1, 2, 3, 4]
  assert all(r["ids"][:3] == [256, 97, 98] and r["settings"] == cfg.options()
             for r in first.records)
  merged = shards.merge(tmp_path / "job")
  shards.shard_path(tmp_path / "job", 2, 4).unlink()                    # as if killed
  again = jobs.run_sampling_job(cfg, job, progress=False)
  assert [r["index"] for r in again.records] == [2, 3]                # only the missing rows
  assert shards.merge(tmp_path / "job") == merged
  manifest = json.loads((tmp_path / "job" / shards.MANIFEST).read_text())
  assert remdm_jax.sampler_config(**manifest["sampler"]) == cfg
  with pytest.raises(ValueError, match=r"other settings \(differs in \['sampler'\]\)"):
    jobs.run_sampling_job(cfg.with_options(eta=0.06), job, progress=False)


def test_throughput_record():
  record = jobs.Throughput(seq_len=10)
  assert record.summary()["samples_per_s"] == 0.0
  record.add(4, 2.0)
  record.add(2, 1.0)
  summary = record.summary()
  assert summary["samples_per_s"] == 2.0 and summary["tokens_per_s"] == 20.0
  assert summary["peak_memory_mib"] > 0


def test_step_callback_sees_every_step_and_leaves_the_tokens(mixture):
  cfg = sampler_config("dfm", num_steps=8)
  plan, rule = remdm_jax.build_plan(cfg)
  seen = []
  run = lambda on_step: jax.jit(lambda k: remdm_jax.sample_with_plan(
      k, mixture, plan, rule, batch_size=3, seq_len=6, mask_id=4, on_step=on_step))(
          jax.random.key(0))
  with_hook, without = run(lambda step: seen.append(int(step))), run(None)
  jax.effects_barrier()
  np.testing.assert_array_equal(with_hook, without)
  assert sorted(seen) == list(range(plan.table.t.shape[0]))


def test_step_progress_counts_steps_over_batches():
  bar = jobs.StepProgress(total_steps=3 * 4, enabled=False)
  for batch in range(3):
    bar.offset = batch * 4
    for step in (0, 1, 1, 2, 3, 3):          # devices may repeat a step
      bar(step)
  assert bar.done == 12
  bar.close()


@pytest.mark.slow
def test_merge_scores_with_an_evaluator(tiny_model, causal_model, tmp_path, capsys):
  job = jobs.SampleJob(model=str(tiny_model), num_samples=4, batch_size=4,
                       out=str(tmp_path / "job"))
  jobs.run_sampling_job(sampler_config(num_steps=4), job, progress=False)
  assert cli.merge_main([str(tmp_path / "job"), f"--merge.evaluator={causal_model}",
                         "--merge.add_bos=true", "--merge.batch_size=3"]) == 0
  summary = json.loads(capsys.readouterr().out)
  texts = [r["text"] for r in shards.merge(tmp_path / "job")]
  logits_fn, _ = as_evaluator(remdm_jax.load_model(causal_model))
  tok = ByteTokenizer()
  assert summary["samples"] == 4
  assert summary["gen_ppl"] == pytest.approx(
      metrics.gen_ppl(logits_fn, tok, texts, 24, 4, add_bos=True), rel=1e-5)
  assert summary["entropy"] == pytest.approx(
      metrics.mean_entropy([tok.encode(t) for t in texts]))
  assert cli.merge_main([str(tmp_path / "job"), f"--merge.evaluator={tiny_model}"]) == 2
  assert "evaluator must be a causal model folder" in capsys.readouterr().err


def test_as_evaluator_is_the_model_at_zero_noise(causal_model):
  model = remdm_jax.load_model(causal_model)
  logits_fn, features_fn = as_evaluator(model)
  tokens = jnp.asarray(np.arange(24).reshape(2, 12) % 259, jnp.int32)
  np.testing.assert_array_equal(logits_fn(tokens), model(tokens, jnp.zeros((2,), jnp.float32)))
  features = features_fn(tokens)
  assert features.shape == (2, 12, 16) and features.dtype == jnp.float32
  # position i must not see position j > i (causal): changing the last token keeps the rest
  changed = tokens.at[:, -1].set(5)
  np.testing.assert_allclose(logits_fn(changed)[:, :-1], logits_fn(tokens)[:, :-1], atol=1e-6)
  with pytest.raises(ValueError, match="as_evaluator needs a causal DiT"):
    as_evaluator(DiT(DiTConfig(vocab_size=259, **SMALL), rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("vocab,expected", [(50_258, "gpt2"), (259, "bytes")])
def test_tokenizer_is_guessed_from_the_vocabulary_when_not_recorded(vocab, expected, tmp_path):
  folder = save_model(DiT(DiTConfig(vocab_size=vocab, **SMALL), rngs=nnx.Rngs(0)),
                      tmp_path / "m", tokenizer=None)
  assert load_tokenizer_name(folder) == expected
  recorded = save_model(DiT(DiTConfig(vocab_size=vocab, **SMALL), rngs=nnx.Rngs(0)),
                        tmp_path / "r", tokenizer="bytes")
  assert load_tokenizer_name(recorded) == "bytes"


def test_cache_is_refused_for_a_time_conditioned_model(tmp_path):
  model = DiT(DiTConfig(vocab_size=259, time_conditioning=True, **SMALL), rngs=nnx.Rngs(0))
  cfg = sampler_config(num_steps=4, cache=True)
  with pytest.raises(ValueError, match=r"cache=True reuses .* this one reads t \(reads_t=True"):
    remdm_jax.sample(jax.random.key(0), as_denoiser(model), cfg, batch_size=1, seq_len=8,
                     mask_id=258)
  wrapped = as_denoiser(model)
  with pytest.raises(ValueError, match="a plain function is assumed to"):   # a wrapper too
    remdm_jax.sample(jax.random.key(0), lambda z, t: wrapped(z, t), cfg, batch_size=1,
                     seq_len=8, mask_id=258)
  folder = save_model(model, tmp_path / "m", tokenizer="bytes")
  with pytest.raises(ValueError, match="reads_t=True"):
    jobs.run_sampling_job(cfg, jobs.SampleJob(model=str(folder), num_samples=1,
                                              batch_size=1), progress=False)
  untimed = DiT(DiTConfig(vocab_size=259, **SMALL), rngs=nnx.Rngs(0))
  out = remdm_jax.sample(jax.random.key(0), as_denoiser(untimed), cfg, batch_size=1,
                         seq_len=8, mask_id=258)
  assert out.shape == (1, 8)


@pytest.mark.slow
def test_job_records_can_keep_the_trajectory(tiny_model, tmp_path):
  cfg = sampler_config("loop", eta=0.1, num_steps=6)
  job = jobs.SampleJob(model=str(tiny_model), num_samples=3, batch_size=2, trajectory=True,
                       out=str(tmp_path / "job"))
  records = jobs.run_sampling_job(cfg, job, progress=False).records
  plain = jobs.run_sampling_job(cfg, jobs.SampleJob(model=str(tiny_model), num_samples=3,
                                                    batch_size=2), progress=False).records
  for record, other in zip(records, plain):
    trajectory = record["trajectory"]
    assert record["ids"] == other["ids"] and len(trajectory["steps"]) == 6
    last = np.asarray(trajectory["steps"][-1])
    assert np.all((last == record["ids"]) | (last == 258))
    assert all(last_step[p] == 258 for last_step, positions in
               zip(trajectory["steps"], trajectory["remasked"]) for p in positions)


def _random_folder(path, **cfg_fields):
  """A DiT model folder with random (non-zero) output weights, and the model."""
  model = DiT(DiTConfig(vocab_size=259, time_conditioning=True, **SMALL, **cfg_fields),
              rngs=nnx.Rngs(0))
  for layer in (model.output_linear, model.output_adaLN):
    layer.kernel[...] = 0.5 * jax.random.normal(jax.random.key(1), layer.kernel[...].shape)
  return save_model(model, path, tokenizer="bytes"), model


@pytest.mark.parametrize("guidance", [pytest.param("none", marks=pytest.mark.slow), "cfg",
                                      pytest.param("cbg", marks=pytest.mark.slow)])
def test_guided_jobs_decode_the_guided_argmax(guidance, tmp_path):
  """A job with class_label / guidance samples from the guided denoiser it names (and records
  the guidance in its manifest). The oracle is not the sampler: with one step from t = 1 and
  temperature 1e-4, every position is decoded at once (the unmask probability is
  1 - t_min / 1, so all 48 positions are decoded with probability 1 - 5e-4; this seed does)
  and takes the argmax of the guided logits at the all-mask input, which the guided
  denoiser gives when called directly (the next id is at least 1e-3 below in log-probability,
  so a tempered draw picks another with probability below exp(-10))."""
  folder, model = _random_folder(tmp_path / "cond", num_classes=2)
  classifier = None
  extra = {}
  if guidance == "cbg":
    from remdm_jax.models import NoisyClassifier
    classifier = NoisyClassifier(DiTConfig(vocab_size=259, time_conditioning=True,
                                           num_classes=2, **SMALL), rngs=nnx.Rngs(2))
    extra = dict(classifier=str(save_model(classifier, tmp_path / "cls", tokenizer="bytes")))
  job = jobs.SampleJob(model=str(folder), num_samples=2, batch_size=2, seed=3, class_label=1,
                       out=str(tmp_path / "job"), **extra)
  chosen = {"none": remdm_jax.NoGuidance(), "cfg": remdm_jax.Cfg(gamma=2.0),
            "cbg": remdm_jax.Cbg(gamma=2.0)}[guidance]
  cfg = sampler_config("mdlm", num_steps=1, temperature=1e-4)
  records = jobs.run_sampling_job(cfg, job, chosen, progress=False).records
  as_model = lambda label: as_denoiser(model, label=label)
  if guidance == "none":
    expected_denoiser = as_model(1)
  elif guidance == "cfg":
    expected_denoiser = remdm_jax.classifier_free_guidance(as_model(1), as_model(None), 2.0)
  else:
    expected_denoiser = remdm_jax.classifier_guidance(
        as_model(None), as_classifier(classifier), target=1, gamma=2.0, mask_id=258,
        form="gradient")
  z = jnp.full((2, 24), 258, jnp.int32)
  logits = np.asarray(expected_denoiser(z, jnp.ones((2,), jnp.float32)), np.float64)
  logits[..., 258] = -np.inf
  log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  top2 = np.sort(log_probs, axis=-1)[..., -2:]
  assert (top2[..., 1] - top2[..., 0] > 1e-3).all()
  np.testing.assert_array_equal([r["ids"] for r in records], np.argmax(log_probs, axis=-1))
  manifest = json.loads((tmp_path / "job" / shards.MANIFEST).read_text())
  assert manifest["guidance"] == {"kind": guidance, **({} if guidance == "none" else
                                                       {"gamma": 2.0}),
                                  **({"form": "gradient"} if guidance == "cbg" else {}),
                                  "class_label": 1, "classifier": extra.get("classifier", "")}


def test_guided_job_errors(tiny_model, tmp_path):
  cfg = sampler_config("mdlm", num_steps=4)
  job = jobs.SampleJob(model=str(tiny_model))
  with pytest.raises(ValueError, match="guidance 'cfg' needs a target class"):
    jobs.run_sampling_job(cfg, job, remdm_jax.Cfg(), progress=False)
  with pytest.raises(ValueError, match="guidance 'cbg' without a classifier"):
    jobs.run_sampling_job(cfg, dataclasses.replace(job, class_label=1), remdm_jax.Cbg(),
                          progress=False)
  with pytest.raises(ValueError, match="guidance 'none' with a classifier"):
    jobs.run_sampling_job(cfg, dataclasses.replace(job, classifier=str(tiny_model)),
                          progress=False)
  with pytest.raises(ValueError, match="unknown form .second-order."):
    remdm_jax.Cbg(form="second-order")
  with pytest.raises(ValueError, match=r"class_label must be in \[0, 0\) for this model "
                                       r"\(not class-conditional\), got 1"):
    jobs.run_sampling_job(cfg, jobs.SampleJob(model=str(tiny_model), class_label=1),
                          progress=False)
  with pytest.raises(ValueError, match="is not a classifier folder"):
    jobs.run_sampling_job(cfg, jobs.SampleJob(model=str(tiny_model), class_label=1,
                                              classifier=str(tiny_model)), remdm_jax.Cbg(),
                          progress=False)
  guided = remdm_jax.classifier_guidance(lambda z, t: z, lambda x, t: x, target=0, gamma=1.0,
                                         mask_id=4)
  with pytest.raises(ValueError, match="reads_t=True"):
    remdm_jax.sample(jax.random.key(0), guided, sampler_config("mdlm", num_steps=2,
                                                               cache=True),
                     batch_size=1, seq_len=2, mask_id=4)


@pytest.fixture(scope="module")
def two_jobs(tiny_model, tmp_path_factory):
  """Two finished job folders `a` and `b` of 4 samples (shards of 2) that differ only in the
  sampler's eta."""
  base = tmp_path_factory.mktemp("jobs")
  for name, eta in (("a", 0.02), ("b", 0.04)):
    job = jobs.SampleJob(model=str(tiny_model), num_samples=4, batch_size=2,
                         out=str(base / name))
    jobs.run_sampling_job(sampler_config("cap", eta=eta, num_steps=2), job, progress=False)
  return base


def _rewrite(path, change):
  """Rewrites a shard with `change(record)` applied to each record."""
  records = [json.loads(line) for line in path.read_text().splitlines()]
  for record in records:
    change(record)
  path.write_text(shards.shard_text(records))


def _merge_error(directory, capsys, *flags):
  assert cli.merge_main([str(directory), *flags]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
  assert not (directory / shards.MERGED).exists()
  return err


def test_merge_refuses_a_shard_of_another_job(two_jobs, tmp_path, capsys):
  """A shard of job b (other eta) under job a's manifest is named, not merged."""
  job = shutil.copytree(two_jobs / "a", tmp_path / "a")
  shutil.copy(shards.shard_path(two_jobs / "b", 2, 4), shards.shard_path(job, 2, 4))
  err = _merge_error(job, capsys)
  assert "samples-000000002-000000004.jsonl: line 1: the sample does not belong to this job" \
      in err and "job digest" in err and "settings" in err


def test_merge_of_a_sample_written_twice_in_one_shard_advises_no_data_loss(two_jobs, tmp_path,
                                                                         capsys):
  """A record duplicated inside one shard: the file and both line numbers are named, and the
  advice deletes one line, never the shard (it holds the only copy of its other sample)."""
  job = shutil.copytree(two_jobs / "a", tmp_path / "a")
  path = shards.shard_path(job, 0, 2)
  lines = path.read_text().splitlines()
  path.write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n")
  err = _merge_error(job, capsys)
  assert f"{path}: sample 0 is written twice, at lines 1 and 3" in err
  assert "delete one of those two lines only" in err and "does not belong" not in err


def test_merge_of_a_sample_in_two_shards_names_both_lines(two_jobs, tmp_path, capsys):
  job = shutil.copytree(two_jobs / "a", tmp_path / "a")
  shards.shard_path(job, 1, 3).write_text(
      shards.shard_path(job, 0, 2).read_text().splitlines()[1] + "\n")
  err = _merge_error(job, capsys)
  assert ("sample 1 is in two shards, samples-000000000-000000002.jsonl (line 2) and "
          "samples-000000001-000000003.jsonl (line 1)") in err
  assert "move one shard out of the job folder (do not delete it" in err


def test_every_record_carries_its_jobs_digest_and_is_checked_by_it(two_jobs, tmp_path, capsys):
  job = shutil.copytree(two_jobs / "a", tmp_path / "a")
  manifest = json.loads((job / shards.MANIFEST).read_text())
  assert {r["job"] for r in shards.merge(job)} == {shards.manifest_digest(manifest)}
  (job / shards.MERGED).unlink()
  # same settings, seed and model, but written under another manifest (e.g. other prompts)
  _rewrite(shards.shard_path(job, 0, 2), lambda r: r.update(job="0123456789abcdef"))
  assert "line 1: the sample does not belong to this job (differs from manifest.json in " \
      "job digest '0123456789abcdef'" in _merge_error(job, capsys)


def test_records_written_before_digests_merge_when_they_fit(two_jobs, tmp_path):
  job = shutil.copytree(two_jobs / "a", tmp_path / "a")
  for first in (0, 2):
    _rewrite(shards.shard_path(job, first, first + 2), lambda r: r.pop("job"))
  assert [r["index"] for r in shards.merge(job)] == [0, 1, 2, 3]


def test_damaged_records_are_named_even_when_scoring(two_jobs, causal_model, tmp_path, capsys):
  job = shutil.copytree(two_jobs / "a", tmp_path / "a")
  path = shards.shard_path(job, 0, 2)
  lines = path.read_text().splitlines()
  damaged = {k: v for k, v in json.loads(lines[1]).items() if k != "text"}
  path.write_text(lines[0] + "\n" + json.dumps(damaged) + "\n")
  err = _merge_error(job, capsys, f"--merge.evaluator={causal_model}")
  assert f"{path}: line 2 is a damaged sample record (no text)" in err
  path.write_text(lines[1] + "\n" + lines[0].replace('"index": 0', '"index": 3') + "\n")
  assert "line 2 holds sample 3, outside the shard's rows [0, 2)" in _merge_error(job, capsys)
  path.write_text(lines[0].replace('"index": 0', '"index": true') + "\n" + lines[1] + "\n")
  assert "line 1 is not a sample record (no integer index)" in _merge_error(job, capsys)


def test_a_job_folder_is_used_by_one_run_at_a_time(two_jobs, tiny_model, tmp_path):
  from references.folders import lock_holder
  from remdm_jax.parallel import locks
  job = shutil.copytree(two_jobs / "a", tmp_path / "a")
  with lock_holder(job) as holder:
    with pytest.raises(locks.FolderInUse, match=rf"{job}: the job folder is in use by another "
                       rf"run \(pid {holder.pid} "):
      jobs.run_sampling_job(sampler_config("cap", eta=0.02, num_steps=2),
                            jobs.SampleJob(model=str(tiny_model), num_samples=4, batch_size=2,
                                           out=str(job)), progress=False)
    with pytest.raises(locks.FolderInUse, match=rf"pid {holder.pid} "):
      shards.merge(job)
  assert len(shards.merge(job)) == 4                     # free once the holder is gone


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_bytes("\ufeffROMEO.\nJULIET.\n".encode("utf-8"))
  assert jobs.prompt_texts(jobs.SampleJob(prompt_file=str(path))) == ["ROMEO.", "JULIET."]


@pytest.fixture(scope="module")
def llada_folder(tmp_path_factory):
  """A released-layout LLaDA Instruct folder: tiny random weights in two shards and their
  index, and a tokenizer with a chat template (ids of `references.folders`' folder: 290
  tokens, the mask at 286, the embedding padded to 320 rows)."""
  from references.folders import write_tokenizer_folder
  from references.llada import released_config, released_tensors, write_folder
  folder = tmp_path_factory.mktemp("llada-instruct")
  write_tokenizer_folder(folder)
  config = released_config(embedding_size=320, vocab_size=300, mask_token_id=286,
                           eos_token_id=285, pad_token_id=285, max_sequence_length=32)
  return write_folder(folder, config, released_tensors(config))


@pytest.mark.slow
def test_a_released_llada_folder_samples_as_a_job(llada_folder, tmp_path):
  """`--job.model` takes a released LLaDA folder: weights split over a model axis as they are
  read, prompts as user turns of its chat template, and the job resumes like any other."""
  from remdm_jax.text.hf_tokenizer import HFTokenizer
  tokenizer = HFTokenizer(llada_folder)
  argv = [f"--job.model={llada_folder}", "--job.prompt=What is two plus two?",
          "--job.chat=true", "--job.seq_len=32", "--job.num_samples=4", "--job.batch_size=4",
          "--job.model_axis=2", f"--job.out={tmp_path / 'job'}", "--job.quiet=true",
          "--sampler.strategy=cap", "--sampler.eta=0.05", "--sampler.num_steps=4"]
  assert cli.sample_main(argv) == 0
  records = shards.merge(tmp_path / "job")
  prompt = tokenizer.encode_chat([{"role": "user", "content": "What is two plus two?"}])
  assert prompt[0] == tokenizer.bos_id and len(prompt) < 32
  for record in records:
    assert record["ids"][:len(prompt)] == prompt                    # the prompt is kept
    assert tokenizer.mask_id not in record["ids"]                   # the answer is decoded
  manifest = json.loads((tmp_path / "job" / shards.MANIFEST).read_text())
  assert manifest["chat"] and manifest["tokenizer"] == str(llada_folder)
  assert manifest["model_config"]["mask_id"] == 286
  assert cli.sample_main(argv) == 0                                 # resumes: nothing to do
  assert shards.merge(tmp_path / "job") == records
  with pytest.raises(ValueError, match="chat=true needs a model folder whose tokenizer has a "
                     "chat template"):
    jobs.prompt_rows(["hi"], 1, ByteTokenizer(), 8, chat=True)


def test_a_llada_job_decodes_blocks_with_a_dual_cache(llada_folder, tmp_path):
  """`--sampler.strategy=llada` with the dual cache, EOS and trajectories, weights split over
  a model axis: the prompt is kept, the answer decoded, everything after an EOS is EOS, and
  the trajectory has blocks x steps records."""
  from remdm_jax.text.hf_tokenizer import HFTokenizer
  tokenizer = HFTokenizer(llada_folder)
  argv = [f"--job.model={llada_folder}", "--job.prompt=What is two plus two?",
          "--job.chat=true", "--job.seq_len=32", "--job.num_samples=2", "--job.batch_size=2",
          "--job.model_axis=2", f"--job.out={tmp_path / 'job'}", "--job.quiet=true",
          "--job.trajectory=true", "--sampler.strategy=llada", "--sampler.block_length=8",
          "--sampler.num_steps=4", "--sampler.temperature=0", "--sampler.kv_cache=dual",
          f"--sampler.eos_id={tokenizer.eos_id}"]
  assert cli.sample_main(argv) == 0
  prompt = tokenizer.encode_chat([{"role": "user", "content": "What is two plus two?"}])
  for record in shards.merge(tmp_path / "job"):
    ids = record["ids"]
    assert ids[:len(prompt)] == prompt and tokenizer.mask_id not in ids
    answer = ids[len(prompt):]
    if tokenizer.eos_id in answer:
      assert set(answer[answer.index(tokenizer.eos_id):]) == {tokenizer.eos_id}
    assert len(record["trajectory"]["steps"]) == 4 * -(-(32 - len(prompt)) // 8)
