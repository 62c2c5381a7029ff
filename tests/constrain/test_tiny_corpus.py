"""The tiny random model (no idea of JSON) under constraints: every output parses (openai-harmony)
and validates (jsonschema) over a corpus of schemas and of required/named tool calls, with a
reasoning budget so that it reaches the answer; one half is pushed into long analysis by a
logit_bias so that the budget is what ends it. Sampled and greedy rows share batches; an
all-greedy batch and a preempting KV cache are covered too."""

from __future__ import annotations

import json

import jsonschema
import pytest
from openai_harmony import HarmonyEncodingName, Role, load_harmony_encoding

from gptoss_serve import LLM, SamplingParams
from gptoss_serve.constrain import build_constraint, build_text_constraint
from gptoss_serve.harmony.render import RenderOptions, render_chat
from gptoss_serve.harmony.tokenizer import get_tokenizer
from gptoss_serve.model.synthetic import write_checkpoint

BUDGET = 12
MAX_TOKENS = 160
ANALYSIS_ID = get_tokenizer().encode("analysis")[0]
S = {"type": "string", "maxLength": 8}


def obj(required: bool = True, **props) -> dict:
    """A closed object schema (every property required unless told otherwise)."""
    return {"type": "object", "properties": props, "additionalProperties": False,
            **({"required": list(props)} if required else {})}


def integer(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


CORPUS = [
    obj(a=obj(b=obj(c=integer(0, 999)))),
    obj(xs={"type": "array", "items": integer(-9, 9), "minItems": 2, "maxItems": 4}),
    obj(color={"enum": ["red", "green", "blue"]}, n=integer(-3, 7)),
    obj(v={"anyOf": [integer(100, 200), {"type": "boolean"}, S]}),
    obj(name=S, tags={"type": "array", "items": S, "maxItems": 2}),
    {"type": "array", "items": obj(k={"const": "x"}, ok={"type": "boolean"}),
     "minItems": 1, "maxItems": 2},
    obj(p=integer(0, 1), q={"type": ["string", "null"], "maxLength": 4}),
    obj(required=False, x=integer(0, 5), y=S),
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": obj(
    city=S, unit={"enum": ["c", "f"]})}},
         {"type": "function", "function": {"name": "add", "parameters": obj(
             a=integer(-5, 99), b=integer(0, 50))}}]
USER = [{"role": "user", "content": "Answer in the format."}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("constrain-tiny"), preset="tiny", seed=3)


@pytest.fixture(scope="module")
def llm(checkpoint) -> LLM:
    return LLM(checkpoint, dtype="float32", device="cpu", kv_cache_memory_gib=0.05, max_num_seqs=32,
               max_num_batched_tokens=2048)


@pytest.fixture(scope="module")
def harmony():
    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def params(spec, i: int, *, think: bool) -> SamplingParams:
    """Row i: greedy or sampled; `think` biases the model towards writing analysis."""
    bias = ((ANALYSIS_ID, 30.0),) if think else ()
    return SamplingParams(temperature=0.0 if i % 3 == 0 else 1.0, seed=i, max_tokens=MAX_TOKENS,
                          logit_bias=bias, constraint=spec)


def prelude_tokens(token_ids: list[int]) -> int:
    """Tokens of the message bodies closed by `<|end|>` (analysis and preambles)."""
    tok = get_tokenizer()
    message, end = tok.encode_special("<|message|>"), tok.encode_special("<|end|>")
    total = body = 0
    inside = False
    for t in token_ids:
        if t == message:
            inside, body = True, 0
        elif t == end and inside:
            total, inside = total + body, False
        elif inside:
            body += 1
    return total


def messages(harmony, token_ids):
    return harmony.parse_messages_from_completion_tokens(token_ids, Role.ASSISTANT)


def test_every_constrained_final_validates(llm, harmony):
    prompts, rows, schemas = [], [], []
    for k, schema in enumerate(CORPUS):
        rf = {"type": "json_schema", "json_schema": {"name": f"s{k}", "schema": schema}}
        spec = build_constraint(response_format=rf, max_reasoning_tokens=BUDGET)
        prompt = render_chat(USER, RenderOptions(response_format=rf)).token_ids
        for j in range(4):
            prompts.append(prompt)
            rows.append(params(spec, len(rows), think=j % 2 == 1))
            schemas.append(schema)
    outs = llm.generate(prompts, rows)
    analysed = 0
    for out, schema in zip(outs, schemas, strict=True):
        seq = out.outputs[0]
        assert seq.finish_reason == "stop", get_tokenizer().decode(seq.token_ids)
        msgs = messages(harmony, seq.token_ids)
        final = msgs[-1]
        assert final.channel == "final" and final.recipient is None
        jsonschema.validate(json.loads(final.content[0].text), schema)
        assert prelude_tokens(seq.token_ids) <= BUDGET
        analysed += len(msgs) > 1
    assert analysed >= len(CORPUS)  # the biased half did reason before answering


@pytest.mark.parametrize("choice", ["required", "get_weather", "add"])
def test_every_required_or_named_call_validates(llm, harmony, choice):
    tool_choice = choice if choice == "required" else {"type": "function",
                                                       "function": {"name": choice}}
    spec = build_constraint(tools=TOOLS, tool_choice=tool_choice, max_reasoning_tokens=BUDGET)
    prompt = render_chat(USER, RenderOptions(tools=TOOLS)).token_ids
    outs = llm.generate([prompt] * 8, [params(spec, i, think=i % 2 == 1) for i in range(8)])
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for out in outs:
        seq = out.outputs[0]
        assert seq.finish_reason == "stop"
        assert seq.token_ids[-1] == get_tokenizer().encode_special("<|call|>")
        call = messages(harmony, seq.token_ids)[-1]
        name = call.recipient.removeprefix("functions.")
        assert name in by_name and (choice == "required" or name == choice)
        jsonschema.validate(json.loads(call.content[0].text), by_name[name])


def test_completions_grammar_from_the_first_token(llm):
    tok = get_tokenizer()
    cases = [({"regex": r"[A-Z][a-z]{2,5} [0-9]{1,3}"}, r"^[A-Z][a-z]{2,5} [0-9]{1,3}$"),
             ({"choice": ["alpha", "beta gamma"]}, r"^(alpha|beta gamma)$"),
             ({"grammar": 'start: "(" num ("," num)* ")"\nnum: /[0-9]{1,2}/'},
              r"^\([0-9]{1,2}(,[0-9]{1,2})*\)$")]
    import re

    for so, pattern in cases:
        spec = build_text_constraint(structured_outputs=so)
        outs = llm.generate([tok.encode("Write:")] * 4,
                            [SamplingParams(temperature=1.0, seed=i, max_tokens=40,
                                            stop_token_ids=(200002, 200012), constraint=spec)
                             for i in range(4)])
        for out in outs:
            seq = out.outputs[0]
            if seq.finish_reason == "length":
                continue  # a long repetition; never invalid
            text = tok.decode([t for t in seq.token_ids if not tok.is_special(t)])
            assert re.match(pattern, text), text


def test_cut_by_max_tokens_ends_length_without_fake_json(llm):
    rf = {"type": "json_schema", "json_schema": {"name": "long", "schema": {
        "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 50}}}
    spec = build_constraint(response_format=rf)
    prompt = render_chat(USER, RenderOptions(response_format=rf)).token_ids
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20,
                                                constraint=spec))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 20


def test_all_greedy_batch_leaves_the_greedy_screen(llm, harmony):
    """A step whose rows are all greedy would take the model's argmax screen (no logits); a
    constrained row must not, or its tokens would ignore the mask."""
    from gptoss_serve.engine.sampler import Sampler, SamplingRow

    spec = build_constraint(response_format={"type": "json_object"}, max_reasoning_tokens=4)
    row = SamplingRow(SamplingParams(temperature=0.0, constraint=spec), 0, constrained=True)
    assert not Sampler.argmax_only([row])
    prompt = render_chat(USER, RenderOptions(response_format={"type": "json_object"})).token_ids
    outs = llm.generate([prompt] * 3, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS,
                                                     constraint=spec))
    for out in outs:
        seq = out.outputs[0]
        assert seq.finish_reason == "stop"
        assert isinstance(json.loads(messages(harmony, seq.token_ids)[-1].content[0].text), dict)


def test_preempted_constrained_sequences_still_validate(checkpoint, harmony):
    """A KV cache too small for the batch preempts sequences mid-output; recomputed, they keep
    their matcher state (no token is sampled twice) and still validate."""
    small = LLM(checkpoint, dtype="float32", device="cpu",
                kv_cache_memory_gib=160 * 1024 / (1 << 30), max_num_seqs=8,
                max_num_batched_tokens=64, block_size=4)
    schema = CORPUS[1]
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    spec = build_constraint(response_format=rf, max_reasoning_tokens=40)
    prompt = render_chat(USER, RenderOptions(response_format=rf)).token_ids
    outs = small.generate([prompt] * 8, [params(spec, i, think=True) for i in range(8)])
    assert small.engine.stats().num_preemptions > 0
    for out in outs:
        seq = out.outputs[0]
        assert seq.finish_reason == "stop"
        jsonschema.validate(json.loads(messages(harmony, seq.token_ids)[-1].content[0].text),
                            schema)
