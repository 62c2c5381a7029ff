"""Constrained decoding: request options -> grammars -> per-sequence llguidance constraints.

`builder` (the API's entry point), `grammar` (grammar text), `schema` (JSON Schema checks),
`matcher` (compile cache and the per-sequence constraint), `tokenizer` (llguidance's vocabulary).
Knows nothing of HTTP; the engine sees only `engine.constraint`'s protocol.
"""

from gptoss_serve.constrain.builder import build_constraint, build_text_constraint, check_tools
from gptoss_serve.constrain.matcher import ConstraintSpec, GrammarConstraint

__all__ = ["ConstraintSpec", "GrammarConstraint", "build_constraint", "build_text_constraint",
           "check_tools"]
