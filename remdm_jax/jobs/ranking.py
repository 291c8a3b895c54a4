"""Ranking decoders on a task model at equal numbers of model calls (NFE).

A decoder here is a name and a function `(nfe, answer_length) -> sampler config` that spends
`nfe` model calls on an answer of `answer_length` positions (`METHODS`); `rank` scores every
decoder at every NFE on the same examples, for each model (training seed), and `table` turns
the scores into accuracies with 95% intervals over seeds and McNemar tests, on the same items,
of each decoder against `low_confidence` at the same NFE.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from remdm_jax.eval.intervals import mcnemar, pass_at_1, wilson
from remdm_jax.sampling.config import BlockConfig, sampler_config
from remdm_jax.sampling.repredict import RepredictConfig

BASELINE = "low_confidence"


def _block(**options) -> Callable:
  """One block over the whole answer, `nfe` regular steps, and `options`."""
  return lambda nfe, length: BlockConfig(block_length=length, num_steps=nfe, **options)


def _remdm_llada(number: int, select: str = "confidence", **options) -> Callable:
  """ReMDM-LLaDA within the budget: 3/4 of the calls are regular steps, the rest remasking
  steps (remasking `number` tokens each), started after 7/8 of the regular steps as in
  `llada_remdm_sample`; `options` as `BlockConfig`'s (temperature)."""
  def build(nfe, length):
    regular = max(1, (3 * nfe) // 4)
    return BlockConfig(block_length=length, num_steps=regular, remdm_number=number,
                       remdm_start=(7 * regular) // 8, remdm_steps=nfe - regular,
                       remdm_select=select, **options)
  return build


def _cap(nfe, length):
  """ReMDM-cap on the regular steps, with the paper's eta (0.04 for T < L, 0.008 otherwise)."""
  return BlockConfig(block_length=length, num_steps=nfe, remask_sigma="cap",
                     eta=0.04 if nfe < length else 0.008)


def _four_blocks(**options) -> Callable:
  """Four blocks of `ceil(length / 4)` positions (the last may be shorter), `nfe // 4` steps
  each: `4 (nfe // 4)` model calls, up to 3 fewer than `nfe`."""
  return lambda nfe, length: BlockConfig(block_length=-(-length // 4),
                                         num_steps=max(1, nfe // 4), **options)


def _steps(strategy: str, **options) -> Callable:
  """A diffusion-step strategy: `nfe - 1` steps, then its final noise-removal call."""
  return lambda nfe, length: sampler_config(strategy, num_steps=max(1, nfe - 1), **options)


METHODS: dict[str, Callable] = {
    "low_confidence": _block(),
    "random": _block(remasking="random"),
    "remdm_llada_1": _remdm_llada(1),
    "remdm_llada_2": _remdm_llada(2),
    "remdm_llada_random": _remdm_llada(1, "random"),
    "low_confidence_t0.7": _block(temperature=0.7),
    "remdm_llada_1_t0.7": _remdm_llada(1, temperature=0.7),
    "remdm_llada_random_t0.7": _remdm_llada(1, "random", temperature=0.7),
    "remask_cap": _cap,
    "remask_conf": _block(remask_sigma="conf"),
    "threshold_0.9": _block(threshold=0.9),
    "blocks4": _four_blocks(),
    "blocks4_prefix_cache": _four_blocks(kv_cache="prefix"),
    "blocks4_dual_cache": _four_blocks(kv_cache="dual"),
    "repredict_topk": lambda nfe, length: RepredictConfig(num_steps=nfe),
    "mdlm": _steps("mdlm"),
    "mdlm_argmax": _steps("mdlm", temperature=1e-4),
    "topk": _steps("topk"),
    "topk_remask": _steps("topk", remask=1),
    "cap": _steps("cap", eta=0.04),
    "loop": _steps("loop", eta=0.02),
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One decoder at one NFE: accuracy over seeds and the paired test against the baseline."""

  method: str
  nfe: int
  accuracy: float          # mean over seeds
  half_width: float        # 95% Student-t over seeds (NaN with one seed)
  wilson: tuple[float, float]   # 95% Wilson interval of all (seed, item) pairs pooled
  wins: int                # pairs only this decoder solved (vs the baseline)
  losses: int              # pairs only the baseline solved
  p_value: float           # McNemar exact, two-sided

  def cells(self, baseline: str = BASELINE) -> str:
    """Markdown cells `accuracy % | 95% over seeds | Wilson 95% (pooled) | +wins / -losses |
    McNemar p` (p in bold below 0.05; "baseline" on the baseline's row)."""
    spread = "n/a" if np.isnan(self.half_width) else f"+- {100 * self.half_width:.1f}"
    paired = "baseline | " if self.method == baseline else (
        f"+{self.wins} / -{self.losses} | " +
        (f"**{self.p_value:.3g}**" if self.p_value < 0.05 else f"{self.p_value:.3g}"))
    return (f"{100 * self.accuracy:.1f} | {spread} | [{100 * self.wilson[0]:.1f}, "
            f"{100 * self.wilson[1]:.1f}] | {paired}")


def table(correct: dict[tuple[str, int], np.ndarray], baseline: str = BASELINE) -> list[Row]:
  """Rows for `correct[(method, nfe)] = [S, N] bool` (seeds by items), sorted by NFE then
  method; each is paired with `baseline` at the same NFE (p = 1 when it was not run)."""
  rows = []
  for (method, nfe), scores in sorted(correct.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    scores = np.asarray(scores, bool)
    summary = pass_at_1(scores)
    base = correct.get((baseline, nfe))
    wins, losses, p = (mcnemar(scores.ravel(), np.asarray(base, bool).ravel())
                       if base is not None else (0, 0, 1.0))
    rows.append(Row(method, nfe, summary.mean, summary.half_width,
                    wilson(int(scores.sum()), scores.size), wins, losses, p))
  return rows


def markdown(rows: list[Row]) -> str:
  """The rows as a Markdown table (accuracy in percent)."""
  lines = ["| decoder | NFE | accuracy % | 95% over seeds | Wilson 95% (pooled) | "
           "vs low_confidence: +/- | McNemar p |", "|---|---|---|---|---|---|---|"]
  lines += [f"| {r.method} | {r.nfe} | {r.cells()} |" for r in rows]
  return "\n".join(lines) + "\n"


# approximation -> what it approximates: Fast-dLLM's caches and threshold decoding
APPROXIMATES = {"blocks4_prefix_cache": "blocks4", "blocks4_dual_cache": "blocks4",
                "threshold_0.9": "low_confidence"}


def agreements(predictions: dict[tuple[str, int], list[str]]) -> list[tuple[str, str, int, float]]:
  """`(method, exact, nfe, fraction of identical answers)` for each approximation of
  `APPROXIMATES` run beside the decoder it approximates, over the same (model, item) pairs."""
  found = []
  for (method, nfe), answers in sorted(predictions.items()):
    exact = APPROXIMATES.get(method)
    if exact is not None and (exact, nfe) in predictions:
      same = [a == b for a, b in zip(answers, predictions[(exact, nfe)])]
      found.append((method, exact, nfe, float(np.mean(same))))
  return found


def agreement_markdown(found) -> str:
  """The agreements as a Markdown table ("" when there are none)."""
  if not found:
    return ""
  lines = ["", "| approximation | exact decoder | NFE | identical answers % |", "|---|---|---|---|"]
  lines += [f"| {m} | {e} | {n} | {100 * a:.1f} |" for m, e, n, a in found]
  return "\n".join(lines) + "\n"
