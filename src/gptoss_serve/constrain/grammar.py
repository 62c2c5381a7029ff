"""Grammars of constrained outputs, as llguidance grammar lists (JSON text), pure functions.

`harmony_grammar`: the whole harmony completion after the prompt's `<|start|>assistant`. Any
number of analysis messages and commentary preambles come first, their bodies free text that ends
only at `<|end|>` (the header is checked token by token on the special ids); then the constrained
tail: a `final` message (header `<|channel|>final` alone: a lone content type there would read as
a recipient, openai-harmony and facts 5.9) whose content is the `content` sub-grammar, ending
`<|return|>`, and/or a call `to=functions.NAME` (recipient before or after the channel, content
type `<|constrain|>json` glued, spaced, ` json` or absent) whose arguments follow that function's
parameters, ending `<|call|>`. With `allow_preludes=False` (after a reasoning budget is spent)
only the tail is left.

`text_grammar`: a grammar for raw text from the first token (/v1/completions).

Content kinds (`Content`): json (a schema), regex, choice (literal strings), lark (a grammar),
free (any text). Owns grammar text only; must not know requests, HTTP or the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import llguidance

from gptoss_serve.constrain.schema import json_subgrammar

KINDS = ("json", "regex", "choice", "lark", "free")
FREE = r"/(?s:.*)/"


@dataclass(frozen=True)
class Content:
    """What a constrained message body must be."""

    kind: str  # one of KINDS
    spec: str = ""  # JSON text of the schema, the regex, JSON list of choices, or Lark text

    def subgrammar(self, name: str) -> dict[str, Any]:
        if self.kind == "json":
            return json_subgrammar(json.loads(self.spec), name)
        return {"name": name, "lark_grammar": self.lark()}

    def lark(self) -> str:
        if self.kind == "regex":
            return "start: " + _regex_lexeme(self.spec)
        if self.kind == "choice":
            return "start: " + " | ".join(json.dumps(c) for c in json.loads(self.spec))
        if self.kind == "lark":
            return self.spec
        return "start: " + FREE


def json_content(schema: Any) -> Content:
    return Content("json", json.dumps(schema))  # key order kept: properties come in order


def _regex_lexeme(regex: str) -> str:
    return "/" + llguidance.regex_to_lark(regex, "") + "/"


def _grammar_list(lark: str, subs: list[dict[str, Any]]) -> str:
    return json.dumps({"grammars": [{"lark_grammar": lark}, *subs]}, sort_keys=True)


def text_grammar(content: Content) -> str:
    """Raw text that matches `content` from the first generated token."""
    if content.kind == "json":
        return json.dumps({"grammars": [content.subgrammar("content")]}, sort_keys=True)
    return _grammar_list(content.lark(), [])


def harmony_grammar(final: Content | None, calls: list[tuple[str, Content]],
                    allow_preludes: bool = True) -> str:
    """The harmony completion (module docstring). `final`: the final message's content (None:
    no final message allowed); `calls`: (function name, arguments) that may end the turn."""
    if final is None and not calls:
        raise ValueError("a harmony grammar needs a final message or a call")
    tails, rules, subs = [], [], []
    if final is not None:
        tails.append("final_msg")
        if final.kind == "free":
            rules.append(f'final_msg: <|channel|> "final" <|message|> {FREE} <|return|>')
        else:
            rules.append('final_msg: <|channel|> "final" <|message|> @content <|return|>')
            subs.append(final.subgrammar("content"))
    for i, (name, args) in enumerate(calls):
        to = json.dumps(f" to=functions.{name}")
        tails.append(f"call_{i}")
        rules.append(f'call_{i}: (<|channel|> "commentary" {to} | {to} <|channel|> "commentary")'
                     f" ctype? <|message|> @args_{i} <|call|>")
        subs.append(args.subgrammar(f"args_{i}"))
    lines = [
        "start: prelude* tail" if allow_preludes else "start: tail",
        'prelude: <|channel|> ("analysis" | "commentary") <|message|> free <|end|> '
        '<|start|> "assistant"',
        f"free: {FREE}",
        "tail: " + " | ".join(tails),
        'ctype: " "? <|constrain|> "json" | " json"',
        *rules,
    ]
    return _grammar_list("\n".join(lines) + "\n", subs)
