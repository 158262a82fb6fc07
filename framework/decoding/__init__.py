"""Decoding strategies for LVLMs over a transformers model's forward and KV cache: greedy, beam search, VCD
(loop.py) and HALC (halc.py), with the contrast arithmetic (contrast.py) and FOV geometry (fov.py) they share."""
