"""The gpt-oss model: forward pass, YaRN RoPE, MXFP4 format, checkpoint loading and synthetic
checkpoints. Knows nothing of scheduling, sampling or HTTP."""
