"""Losses: CLIP InfoNCE and RankCLIP ranking consistency (contrastive.py)."""
