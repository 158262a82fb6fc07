"""Tiny LVLMs built from transformers' LLaVA classes (model.py)."""
