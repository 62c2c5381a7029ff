"""The harmony grammar against hand-written token streams: any number of analysis messages and
preambles pass unconstrained, the final message or the call is held to its schema, header
variants of the real model are accepted, escapes are masked, the reasoning budget forces the
answer, and bad schemas are refused naming the parameter."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from gptoss_serve.constrain import build_constraint, build_text_constraint
from gptoss_serve.engine.constraint import apply_bitmask, apply_bitmask_torch, bitmask_words
from gptoss_serve.errors import InvalidRequestError
from gptoss_serve.harmony.tokenizer import VOCAB_SIZE, get_tokenizer

TOK = get_tokenizer()
S = TOK.encode_special
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                           "days": {"type": "integer", "minimum": 1}},
          "required": ["city", "days"], "additionalProperties": False}
RF = {"type": "json_schema", "json_schema": {"name": "trip", "schema": SCHEMA, "strict": True}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"],
    "additionalProperties": False}}},
         {"type": "function", "function": {"name": "noop"}}]


def ids(*parts: str | int) -> list[int]:
    """Ordinary text parts are encoded as text; `<|...|>` parts become their special id."""
    out: list[int] = []
    for p in parts:
        out += [p] if isinstance(p, int) else [S(p)] if p.startswith("<|") else TOK.encode(p)
    return out


def allowed(c, token: int) -> bool:
    mask = torch.zeros(1, bitmask_words(VOCAB_SIZE), dtype=torch.int32)
    c.fill_bitmask(mask, 0)
    return bool((int(mask[0, token // 32]) >> (token % 32)) & 1)


def feed(c, stream: list[int]) -> None:
    """Every token must be allowed by the mask before it, and accepted."""
    for i, t in enumerate(stream):
        assert allowed(c, t), f"token {i} {TOK.decode([t])!r} masked"
        assert c.accept_token(t), f"token {i} {TOK.decode([t])!r} refused"


ANALYSIS = ("<|channel|>", "analysis", "<|message|>", "Let me think. <|end|> is text here.",
            "<|end|>", "<|start|>", "assistant")
ANALYSIS_2 = ("<|channel|>", "analysis", "<|message|>", "More thoughts.", "<|end|>",
              "<|start|>", "assistant")
PREAMBLE = ("<|channel|>", "commentary", "<|message|>", "Checking the weather now.", "<|end|>",
            "<|start|>", "assistant")


def test_two_analysis_messages_then_final():
    c = build_constraint(response_format=RF).new_constraint()
    answer = '{"city":"Paris","days":3}'
    feed(c, ids(*ANALYSIS, *ANALYSIS_2, "<|channel|>", "final", "<|message|>", answer,
                "<|return|>"))
    assert c.is_finished()
    jsonschema.validate(json.loads(answer), SCHEMA)


@pytest.mark.parametrize("header", [
    ("<|channel|>", "commentary to=functions.get_weather", "<|constrain|>", "json"),
    ("<|channel|>", "commentary to=functions.get_weather ", "<|constrain|>", "json"),
    ("<|channel|>", "commentary to=functions.get_weather json"),
    ("<|channel|>", "commentary to=functions.get_weather"),
    (" to=functions.get_weather", "<|channel|>", "commentary ", "<|constrain|>", "json"),
], ids=["glued", "spaced", "plain-json", "no-type", "recipient-first"])
def test_preamble_then_call(header):
    c = build_constraint(tools=TOOLS, tool_choice="required").new_constraint()
    feed(c, ids(*ANALYSIS, *PREAMBLE, *header, "<|message|>", '{"location":"Oslo"}', "<|call|>"))
    assert c.is_finished()


def test_final_cannot_escape_the_schema():
    c = build_constraint(response_format=RF).new_constraint()
    feed(c, ids(*ANALYSIS, "<|channel|>", "final", "<|message|>", '{"city":"Rome"'))
    for escape in ("<|return|>", "<|end|>", "<|call|>", "<|start|>"):
        assert not allowed(c, S(escape))
    for text in ("}", " ,"):  # `days` is missing; no whitespace
        assert not allowed(c, TOK.encode(text)[0])
    feed(c, TOK.encode(',"'))
    assert not allowed(c, TOK.encode("extra")[0])  # additionalProperties false
    assert allowed(c, TOK.encode("days")[0])
    assert not c.is_finished()


def refused(c, stream: list[int]) -> bool:
    """Whether some token of the stream is masked (the tokens before it are fed)."""
    for t in stream:
        if not allowed(c, t):
            return True
        assert c.accept_token(t)
    return False


def fresh(**kw):
    spec = build_constraint(**kw)
    return lambda: spec.new_constraint()


def test_undeclared_or_unchosen_function_is_masked():
    named = fresh(tools=TOOLS, tool_choice={"type": "function",
                                            "function": {"name": "get_weather"}})
    assert refused(named(), ids("<|channel|>", "commentary to=functions.noop"))
    assert refused(named(), ids("<|channel|>", "commentary to=functions.get_time"))
    assert not refused(named(), ids("<|channel|>", "commentary to=functions.get_weather"))
    required = fresh(tools=TOOLS, tool_choice="required")
    assert refused(required(), ids("<|channel|>", "final"))  # a call is required
    assert not refused(required(), ids("<|channel|>", "commentary to=functions.noop"))


def test_arguments_follow_the_parameters():
    call = fresh(tools=TOOLS, tool_choice="required")
    head = ids("<|channel|>", "commentary to=functions.get_weather", "<|message|>")
    assert refused(call(), head + ids('{"city":"Oslo"}'))
    assert refused(call(), head + ids('{"location":"Oslo"}', "<|return|>"))  # calls end <|call|>
    assert not refused(call(), head + ids('{"location":"Oslo"}', "<|call|>"))


def test_budget_forces_the_final_message():
    c = build_constraint(response_format=RF, max_reasoning_tokens=6).new_constraint()
    feed(c, ids("<|channel|>", "analysis", "<|message|>", "one"))
    feed(c, ids(" two three four five six"))  # 5 tokens: the budget of 6 is spent
    forced = ids("<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>")
    for t in forced[:3]:  # the constraint forces these itself
        mask = torch.zeros(1, bitmask_words(VOCAB_SIZE), dtype=torch.int32)
        c.fill_bitmask(mask, 0)
        assert int(mask.ne(0).sum()) == 1 and allowed(c, t)
        assert c.accept_token(t)
    feed(c, forced[3:4])
    assert not allowed(c, TOK.encode("analysis")[0])  # no second round of reasoning
    assert not allowed(c, TOK.encode("commentary")[0])  # nor preambles
    feed(c, forced[4:] + ids('{"city":"X","days":1}', "<|return|>"))
    assert c.is_finished()


def test_budget_zero_and_budget_without_a_format():
    c = build_constraint(max_reasoning_tokens=0).new_constraint()
    feed(c, ids("<|channel|>", "analysis", "<|message|>"))
    assert c.forced == ids("<|end|>", "<|start|>", "assistant")
    c = build_constraint(max_reasoning_tokens=100).new_constraint()  # free final text
    feed(c, ids(*ANALYSIS, "<|channel|>", "final", "<|message|>", "any text {", "<|return|>"))
    assert c.is_finished()


def test_nothing_to_constrain_is_none():
    assert build_constraint() is None
    assert build_constraint(tools=TOOLS, tool_choice="auto") is None
    assert build_constraint(response_format={"type": "text"}) is None
    assert build_text_constraint() is None


@pytest.mark.parametrize(("kw", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"type": "string", "format": "nonsense"}}}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "if": {"type": "string"}, "then": {"maxLength": 3}}}}},
     "response_format.json_schema.schema"),
    ({"tools": [TOOLS[0], {"type": "function", "function": {"name": "bad", "parameters": {
        "type": ["object", 3]}}}], "tool_choice": "auto"}, "tools[1].function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"structured_outputs": {"grammar": "start: undefined_rule"}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
])
def test_bad_options_are_400_naming_the_parameter(kw, param):
    with pytest.raises(InvalidRequestError) as exc:
        build_constraint(**kw)
    assert exc.value.param == param
    assert exc.value.status == 400


def test_text_constraint_from_the_first_token():
    c = build_text_constraint(structured_outputs={"regex": r"[0-9]{3}-[a-z]+"}).new_constraint()
    assert not allowed(c, TOK.encode("a")[0])
    feed(c, TOK.encode("123-abc"))
    assert c.is_finished()
    c = build_text_constraint(structured_outputs={"choice": ["yes", "no"]}).new_constraint()
    assert not allowed(c, TOK.encode("maybe")[0])
    feed(c, TOK.encode("yes"))
    assert c.is_finished()


def test_compiled_grammar_is_cached_by_schema():
    from gptoss_serve.constrain import matcher

    schema = {"type": "object", "properties": {"unique_key_for_cache": {"type": "integer"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    before = matcher.cache_size()
    a = build_constraint(response_format=rf)
    mid = matcher.cache_size()
    b = build_constraint(response_format=json.loads(json.dumps(rf)))
    assert mid == before + 1 and matcher.cache_size() == mid
    assert a.grammar == b.grammar


def test_apply_bitmask_masks_exactly_the_clear_bits():
    logits = torch.zeros(3, 70)
    mask = torch.zeros(2, 3, dtype=torch.int32)
    mask[0, 0] = 1 << 5
    mask[1, 2] = 1 << 1  # token 65
    mask[1, 0] = -(1 << 31)  # token 31 (the sign bit)
    apply_bitmask(logits, [0, 2], mask)
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [5]
    assert torch.isfinite(logits[1]).all()  # row 1 is not constrained
    assert torch.isfinite(logits[2]).nonzero().flatten().tolist() == [31, 65]


def test_c_kernel_and_torch_path_equal_an_independent_unpack():
    from gptoss_serve.kernels.bitmask_cpu import apply_bitmask_c

    gen = torch.Generator().manual_seed(0)
    vocab = 32 * 9 + 5  # a partial last word
    logits = torch.randn(4, vocab, generator=gen)
    mask = torch.randint(-2**31, 2**31 - 1, (3, 10), dtype=torch.int32, generator=gen)
    mask[0, 1], mask[1, 2], mask[2, 3] = 0, -1, -(2**31)
    want = logits.clone()
    words = mask[:, :, None] >> torch.arange(32, dtype=torch.int32)
    keep = (words & 1).bool().reshape(3, -1)[:, :vocab]
    want[[0, 1, 3]] = want[[0, 1, 3]].masked_fill(~keep, float("-inf"))
    got = logits.clone()
    apply_bitmask_torch(got, [0, 1, 3], mask)
    assert torch.equal(got, want)
    got = logits.clone()
    if not apply_bitmask_c(got, [0, 1, 3], mask):
        pytest.skip("no C kernel builds here")
    assert torch.equal(got, want)


def test_ids_past_the_mask_words_are_masked_on_both_paths():
    from gptoss_serve.kernels.bitmask_cpu import apply_bitmask_c

    vocab = 32 * 4  # logits wider than the mask's 2 words
    mask = torch.full((1, 2), -1, dtype=torch.int32)
    got = torch.zeros(2, vocab)
    apply_bitmask_torch(got, [1], mask)
    assert torch.isfinite(got[1]).nonzero().flatten().tolist() == list(range(64))
    assert torch.isfinite(got[0]).all()
    got = torch.zeros(2, vocab)
    if not apply_bitmask_c(got, [1], mask):
        pytest.skip("no C kernel builds here")
    assert torch.isfinite(got[1]).nonzero().flatten().tolist() == list(range(64))
