"""Images as token sequences: the MNIST digits, the patch codebook that tokenizes them, the
digit classifier and Fréchet distance that measure samples, and PNG pictures."""
