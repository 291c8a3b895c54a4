"""Sample quality metrics as the ReMDM paper measures them (section 9 of its protocol)."""

from remdm_jax.eval.metrics import (evaluator_features, gen_ppl, mauve_score, mean_entropy,
                                    unigram_entropy)

__all__ = ["evaluator_features", "gen_ppl", "mauve_score", "mean_entropy", "unigram_entropy"]
