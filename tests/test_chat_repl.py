"""`gptoss-serve chat`: the terminal conversation over the engine (chat_repl.py and the CLI).

A scripted engine replays harmony output (analysis then final) so the routing of reasoning and
answer, the history sent back to the model, /reset and errors are checked against prompts
rendered by openai-harmony (not by our renderer); the CLI runs once for real on the tiny model.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from openai_harmony import (
    Conversation,
    HarmonyEncodingName,
    Message,
    ReasoningEffort,
    Role,
    SystemContent,
    load_harmony_encoding,
)

from gptoss_serve.api.testing import script_ids
from gptoss_serve.chat_repl import REASONING_MARK, ChatOptions, run_chat
from gptoss_serve.engine.request import EngineRequest, StepOutput
from gptoss_serve.errors import InvalidRequestError
from gptoss_serve.harmony.tokenizer import get_tokenizer

REPLY = "<|channel|>analysis<|message|>Thinking it over.<|end|><|start|>assistant" \
        "<|channel|>final<|message|>Answer {n}.<|return|>"


@dataclass
class ScriptedEngine:
    """The LLMEngine calls the REPL makes; each request gets REPLY with its number, 3 ids a step."""

    max_model_len: int = 4096
    requests: list[EngineRequest] = field(default_factory=list)
    _pending: list[int] = field(default_factory=list)

    def validate(self, request: EngineRequest) -> None:
        if len(request.prompt_token_ids) >= self.max_model_len:
            raise InvalidRequestError("conversation longer than the context", param="messages")

    def enqueue(self, request: EngineRequest) -> None:  # a request validate accepted
        self.requests.append(request)
        self._pending = script_ids(get_tokenizer(), REPLY.format(n=len(self.requests)))

    def has_unfinished(self) -> bool:
        return bool(self._pending)

    def step(self) -> list[StepOutput]:
        ids, self._pending = self._pending[:3], self._pending[3:]
        reason = None if self._pending else "stop"
        return [StepOutput(self.requests[-1].request_id, 0, ids, reason)]


def harmony_prompt(turns: list[tuple[str, str]]) -> list[int]:
    """openai-harmony's rendering of a conversation with no date and medium effort."""
    enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    system = SystemContent.new().with_reasoning_effort(ReasoningEffort.MEDIUM)
    msgs = [Message.from_role_and_content(Role.SYSTEM, system)]
    for role, text in turns:
        m = Message.from_role_and_content(Role.USER if role == "user" else Role.ASSISTANT, text)
        msgs.append(m if role == "user" else m.with_channel("final"))
    return enc.render_conversation_for_completion(Conversation.from_messages(msgs), Role.ASSISTANT)


def chat(lines: list[str], engine: ScriptedEngine, **options) -> str:
    out = io.StringIO()
    feed = iter(lines)
    opts = ChatOptions(current_date=None, **options)
    assert run_chat(engine, opts, lambda: next(feed, None), out) == 0
    return out.getvalue()


def test_answers_stream_and_the_history_goes_back_to_the_model():
    engine = ScriptedEngine()
    text = chat(["Hi there", "And again?"], engine)
    assert text == "Answer 1.\nAnswer 2.\n"  # the chain of thought is not printed by default
    assert list(engine.requests[0].prompt_token_ids) == harmony_prompt([("user", "Hi there")])
    assert list(engine.requests[1].prompt_token_ids) == harmony_prompt(
        [("user", "Hi there"), ("assistant", "Answer 1."), ("user", "And again?")])
    stops = set(engine.requests[0].sampling_params.stop_token_ids)
    assert {get_tokenizer().encode_special("<|return|>"),
            get_tokenizer().encode_special("<|call|>")} <= stops


def test_reasoning_is_shown_marked_when_asked():
    text = chat(["Hi"], ScriptedEngine(), show_reasoning=True)
    assert text == f"{REASONING_MARK}Thinking it over.\nAnswer 1.\n"


def test_reset_forgets_and_exit_stops_reading():
    engine = ScriptedEngine()
    text = chat(["One", "/reset", "Two", "/exit", "never read"], engine)
    assert "[conversation reset]" in text and len(engine.requests) == 2
    assert list(engine.requests[1].prompt_token_ids) == harmony_prompt([("user", "Two")])


def test_a_turn_too_long_is_an_error_line_and_not_kept():
    kept = [("user", "short"), ("assistant", "Answer 1."), ("user", "again")]
    engine = ScriptedEngine(max_model_len=len(harmony_prompt(kept)) + 1)
    text = chat(["short", "x " * 50, "again", "/exit"], engine)
    assert "[error] conversation longer than the context" in text
    # the refused turn left no trace: the next prompt is the conversation without it
    assert len(engine.requests) == 2
    assert list(engine.requests[1].prompt_token_ids) == harmony_prompt(kept)


@pytest.mark.slow
def test_cli_chat_on_the_tiny_model(tmp_path):
    env = {**os.environ, "GPTOSS_SERVE_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "gptoss_serve.cli", "chat", "--device", "cpu", "--max-tokens",
         "5", "--temperature", "0", "--current-date", "none", "--kv-cache-memory", "0.01"],
        input="hello\n/reset\nhello\n", capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert "RANDOM" in out[0]
    answers = [ln for ln in out if "[finish_reason: length]" in ln]
    assert len(answers) == 2  # 5 tokens each, cut by --max-tokens
    # greedy and reset: the same prompt twice gives the same answer
    first, second = (proc.stdout.split("[conversation reset]\n")[i] for i in (0, 1))
    assert first.splitlines()[-2] == second.splitlines()[-2]


def test_help_and_unknown_commands_are_never_sent_to_the_model():
    """issue 14.12: /help went to the model as a user turn."""
    engine = ScriptedEngine()
    text = chat(["/help", "/hlep", "/usr/bin is where?"], engine)
    assert "/reset" in text and "[unknown command /hlep" in text
    assert len(engine.requests) == 1  # only the line with a space is a message
    assert list(engine.requests[0].prompt_token_ids) == harmony_prompt(
        [("user", "/usr/bin is where?")])
