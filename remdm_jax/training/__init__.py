"""Training: the MDLM / ReMDM NELBOs and the autoregressive loss (`losses`), the registered
objectives (`objectives`) and the resumable training loop (`loop`, which imports orbax
through the checkpoint code)."""
