"""Shared formats, below the kernels and the model: the MXFP4 number format, the YaRN RoPE
tables and the tensors of one model step (ForwardBatch, KVCache).

Both `kernels/` and `model/` (and `engine/`, which builds the batch) read these, so they live
where nothing imports upward. Knows nothing of kernels, modules, checkpoints or scheduling."""
