"""Harmony: the o200k_harmony tokenizer, the prompt renderer and the output parser of gpt-oss.

Pure functions over token ids and text (vocab.py only reads and writes the vocabulary file).
Knows nothing of torch, the engine or HTTP.
"""
