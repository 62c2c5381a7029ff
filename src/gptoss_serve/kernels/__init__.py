"""Compute kernels: each op's plain-torch reference beside its fast versions (Triton for CUDA,
CPU kernels), with one start-up choice between them in `select.py`."""
