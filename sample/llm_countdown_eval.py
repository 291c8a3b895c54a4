"""Countdown pass@1 of a masked diffusion model, with a 95% interval over sampling seeds.

Draws `--problems` Countdown problems (`remdm_jax.eval.reasoning`), writes their prompts to
OUT/prompts.txt, samples one answer per problem and seed through `remdm_jax.jobs.sample_job` (a job
folder OUT/seed<S>/ per seed: a rerun skips what is done), scores the text after each prompt
and prints pass@1; OUT/summary.json holds the settings, every answer and its score. The
sampler is set by the `--sampler.*` flags of `remdm-sample` (`remdm-sample --help` lists them;
default ReMDM-loop, 256 steps, top-p 0.9).

  # the shipped character-level model (128 bytes, Shakespeare): shows the plumbing, ~0%
  python sample/llm_countdown_eval.py --out runs/reval --problems 4 --seeds 2
  # a released LLaDA Instruct folder with its chat template, LLaDA's block decoding (strategy
  # "llada": num_steps per block), about 300 answer positions, ReMDM-LLaDA remasking
  python sample/llm_countdown_eval.py --model LLaDA-8B-Instruct/ --chat --seq-len 384 \\
      --out runs/countdown --problems 256 --seeds 5 --sampler.strategy=llada \\
      --sampler.block_length=32 --sampler.num_steps=32 --sampler.remdm_number=1 \\
      --sampler.temperature=0.5

--seq-len 0 samples the model's whole context (4096 for LLaDA): set it. With temperature 0
and low-confidence remasking every seed gives the same answers (an interval of width 0).
"""

import argparse
import json
import pathlib
import sys

from remdm_jax.jobs import sample_job as jobs
from remdm_jax.jobs import shards
from remdm_jax.cli import SAMPLE_SECTIONS, ScriptParser, UsageError, check_lows, parse_sections
from remdm_jax.errors import run_cli
from remdm_jax.eval import intervals, reasoning


def _arguments(argv: list[str]):
  parser = ScriptParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default=str(jobs.SHIPPED_MODEL), help="a model folder")
  parser.add_argument("--out", required=True, help="folder for prompts, jobs and summary")
  parser.add_argument("--task", default="countdown", choices=["countdown"])
  parser.add_argument("--problems", type=int, default=16, help="problems per seed")
  parser.add_argument("--seeds", type=int, default=3, help="sampling seeds 0 .. S-1")
  parser.add_argument("--problem-seed", type=int, default=0, help="seed of the problems")
  parser.add_argument("--batch-size", type=int, default=4, help="sequences per sampler call")
  parser.add_argument("--seq-len", type=int, default=0, help="0: the model's max length")
  parser.add_argument("--chat", action="store_true", help="prompts as chat user turns")
  args, rest = parser.parse_known_args(argv)
  check_lows(args, {"--problems": 1, "--seeds": 1, "--problem-seed": 0, "--batch-size": 1,
                    "--seq-len": 0})
  configs, unknown = parse_sections(rest, {"sampler": SAMPLE_SECTIONS["sampler"]})
  if unknown:
    raise UsageError(f"unexpected arguments {unknown}; see --help and remdm-sample --help")
  return args, configs["sampler"]


def _main(argv: list[str]) -> int:
  args, sampler = _arguments(argv)
  problems = reasoning.countdown_problems(args.problem_seed, args.problems)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  prompt_file = out / "prompts.txt"
  prompt_file.write_text("".join(p.prompt() + "\n" for p in problems), encoding="utf-8")
  answers, correct = [], []
  for seed in range(args.seeds):
    job = jobs.SampleJob(model=args.model, prompt_file=str(prompt_file),
                         num_samples=len(problems), batch_size=args.batch_size, seed=seed,
                         seq_len=args.seq_len, chat=args.chat, out=str(out / f"seed{seed}"),
                         quiet=True)
    jobs.run_sampling_job(sampler, job, progress=False)
    records = shards.merge(job.out)          # every record, also those of an earlier run
    answers.append([reasoning.strip_prompt(r["text"], p.prompt())
                    for p, r in zip(problems, records)])
    correct.append([reasoning.score_countdown(p, a) for p, a in zip(problems, answers[-1])])
  result = intervals.pass_at_1(correct)
  summary = {"task": args.task, "model": args.model, "problem_seed": args.problem_seed,
             "chat": args.chat, "sampler": sampler.options(), "pass_at_1": result.as_dict(),
             "problems": [{"numbers": list(p.numbers), "target": p.target,
                           "answers": [a[i] for a in answers],
                           "correct": [c[i] for c in correct]}
                          for i, p in enumerate(problems)]}
  (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
  print(f"{args.task} pass@1: {result}")
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(_main, sys.argv[1:]))
