"""CLIP dual encoder: modified ResNet image tower, causal transformer text tower."""
