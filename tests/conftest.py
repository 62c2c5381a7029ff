"""Session-wide test setup that must happen before any test module is imported.

- Triton decides at import time whether its own library runs under the CPU interpreter, and
  transformers' gpt-oss module imports triton, so TRITON_INTERPRET has to be set here (before
  collection) for the Triton kernel tests in tests/kernels to run on a machine without CUDA.
  With a GPU the kernels compile as usual.
- One intra-op torch thread: the tests use small tensors, and on a shared 2-core machine extra
  threads only contend (measured 15-20x slower with the default).
- Hypothesis: under CI (`CI=true`) examples are derandomized so that a submission's result does
  not depend on luck; locally each run explores new examples.
"""

import os

import pytest
import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
