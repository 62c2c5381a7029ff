"""The load generator behind `gptoss-serve bench` (after vLLM's `vllm bench serve`): workloads
(`workloads.py`), request timing (`client.py`), load shaping (`runner.py`), statistics
(`metrics.py`), the table and JSON (`report.py`) and the run itself (`main.py`).

Talks to any OpenAI-compatible server over HTTP only; knows nothing of the engine or the model.
"""
