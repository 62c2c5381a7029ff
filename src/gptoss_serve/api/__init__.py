"""The OpenAI-compatible HTTP layer: `create_app(engine, config, tokenizer)` in app.py.

Knows the engine only through `generate` and `stats` (closing a generation aborts it), and
harmony only through its renderer, tokenizer and `ChatMapper`.
"""
