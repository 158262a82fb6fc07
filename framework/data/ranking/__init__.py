"""Ranking data: interaction logs and splits, MovieLens reader, generated data, leakage-free history batches, UC
reservoir sampling, id hashing."""
