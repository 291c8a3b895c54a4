"""Reference code the tests share, kept out of the test modules so that no test module imports
another: float64 NumPy forward passes of the DiT and LLaDA, the released folder layouts, a toy
mixture distribution with its exact denoiser and the papers' per-step probabilities, a tiny
tokenizer folder and a lock-holding process. Nothing here is collected as a test."""
