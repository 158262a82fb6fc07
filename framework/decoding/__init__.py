"""Decoding strategies for LVLMs over a transformers model's forward: greedy, beam search, VCD (and HALC's
focal-contrast pieces: FOV geometry, JSD pair selection, bi-directional contrast, plausibility)."""
