"""Sample quality metrics as the ReMDM paper measures them, and the reasoning tasks of its
LLaDA experiments (Countdown, GSM8K-style answers, pass@1 over seeds)."""

from remdm_jax.eval.metrics import (evaluator_features, gen_ppl, mauve_score, mean_entropy,
                                    unigram_entropy)
from remdm_jax.eval.intervals import PassAt1, pass_at_1
from remdm_jax.eval.reasoning import (CountdownProblem, countdown_problems,
                                      extract_number_answer, gsm8k_correct, score_countdown)
from remdm_jax.eval.voting import TemporalVote, majority

__all__ = ["CountdownProblem", "PassAt1", "TemporalVote", "countdown_problems",
           "evaluator_features", "extract_number_answer", "gen_ppl", "gsm8k_correct",
           "majority", "mauve_score", "mean_entropy", "pass_at_1", "score_countdown",
           "unigram_entropy"]
