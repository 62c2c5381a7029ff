"""gptoss-serve: an OpenAI-compatible inference server for gpt-oss-120b and gpt-oss-20b.

Owns only the public names re-exported for users of the offline API.
"""

from gptoss_serve.engine.request import SamplingParams

__all__ = ["LLM", "SamplingParams"]


def __getattr__(name: str):  # lazy: importing the package must not import torch models
    if name == "LLM":
        from gptoss_serve.llm import LLM

        return LLM
    raise AttributeError(name)
