"""Session-wide test setup that must happen before any test module is imported.

Triton decides at import time whether its own library runs under the CPU interpreter, and
transformers' gpt-oss module imports triton, so TRITON_INTERPRET has to be set here (before
collection) for the Triton kernel tests in tests/kernels to run on a machine without CUDA.
No other test uses Triton; with a GPU the kernels compile as usual.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
