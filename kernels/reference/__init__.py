"""PyTorch reference implementations of the fused ops (fp32 math, readable)."""
