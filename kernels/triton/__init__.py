"""Triton kernels (fused forward/backward) registered as ``torch.library`` custom ops; imported lazily by ops.py.

``triton.jit`` decides at decoration time whether a kernel is compiled for a GPU or run by the interpreter
(``TRITON_INTERPRET=1``), so the mode is fixed when this package is first imported; ops.py checks it.
"""

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Whether the kernels were defined under the Triton interpreter (the only way they run on CPU tensors)."""
