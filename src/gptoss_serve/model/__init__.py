"""The gpt-oss model: forward pass, checkpoint loading and synthetic checkpoints (the MXFP4
format and the RoPE tables it reads are in `formats/`). Knows nothing of scheduling, sampling
or HTTP."""
