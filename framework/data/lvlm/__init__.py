"""LVLM data: the annotated scene world (scenes.py)."""
