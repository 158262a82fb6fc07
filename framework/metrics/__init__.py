"""Training/eval metrics; ranking.py holds rank-correct (gathered, never averaged) ranking metrics."""
