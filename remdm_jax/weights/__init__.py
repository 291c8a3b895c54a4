"""Model folders and weights: the library's own folders (orbax), released LLaDA folders
(sharded safetensors read one tensor at a time), the released MDLM PyTorch weights, and the
safetensors reader. `checkpoint` imports orbax; nothing here is imported by the sampler."""
