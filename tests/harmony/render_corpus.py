"""Corpus of OpenAI-style conversations and options for the renderer parity test (data only)."""

from __future__ import annotations

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Gets the current weather in the provided location.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string",
                             "description": "The city and state, e.g. San Francisco, CA"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"],
                           "default": "celsius"},
            },
            "required": ["location"],
        },
    },
}
NO_PARAMS = {"type": "function", "function": {"name": "get_location",
                                              "description": "Gets the location of the user."}}
EMPTY_OBJECT = {"type": "function", "function": {
    "name": "ping", "description": "", "parameters": {"type": "object", "properties": {}}}}
NESTED = {"type": "function", "function": {
    "name": "create_order",
    "description": "Create an order.\nReturns the order id.",
    "parameters": {
        "type": "object",
        "description": "The order to create",
        "properties": {
            "customer": {
                "type": "object",
                "description": "Who buys",
                "properties": {
                    "name": {"type": "string", "title": "Full name"},
                    "address": {"type": "object", "properties": {
                        "city": {"type": "string"}, "zip": {"type": "integer"}},
                        "required": ["city"]},
                },
                "required": ["name"],
            },
            "items": {"type": "array", "items": {"type": "object", "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer", "default": 1}}}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "anything": {"type": "array"},
            "express": {"type": "boolean", "default": False},
            "note": {"type": "string", "default": "none given", "examples": ["leave at door"]},
        },
        "required": ["customer", "items"],
    },
}}
VARIANTS = {"type": "function", "function": {
    "name": "lookup",
    "description": "Look something up.",
    "parameters": {
        "type": "object",
        "properties": {
            "id": {"type": ["number", "string"], "default": -1},
            "when": {"type": "string", "nullable": True, "description": "ISO date"},
            "limit": {"type": "integer", "nullable": True, "default": 10},
            "mode": {"oneOf": [{"type": "string", "enum": ["fast", "slow"], "description": "A"},
                               {"type": "number", "description": "Seconds", "default": 5}],
                     "description": "How to run"},
            "shape": {"oneOf": [{"type": "string", "description": "By name"},
                                {"type": "object", "properties": {"w": {"type": "number"}}}],
                      "description": "By name", "default": "square"},
            "level": {"type": "string", "enum": ["a", "b"], "default": "a", "nullable": True},
            "free": {},
            "ratio": {"type": "number", "default": 0.5},
            "unit": {"type": "string", "enum": ["x"], "title": "Unit", "description": "Unit."},
        },
        "required": ["id", "mode"],
    },
}}
TOP_ONE_OF = {"type": "function", "function": {
    "name": "either", "description": "Top-level oneOf.",
    "parameters": {"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}},
                             {"type": "object", "properties": {"b": {"type": "number"}},
                              "description": "second", "default": {"b": 1}}]},
}}
UNICODE = {"type": "function", "function": {
    "name": "traduire", "description": "Traduit un texte — 翻译 🎌",
    "parameters": {"type": "object", "properties": {
        "texte": {"type": "string", "description": "Le texte à traduire"},
        "langue": {"type": "string", "enum": ["fr", "日本語"], "default": "fr"}}}}}

CALL_ID = "call_abc123"
Q = [{"role": "user", "content": "What is the weather like in SF?"}]
CALL = {"role": "assistant", "content": None, "tool_calls": [{
    "id": CALL_ID, "type": "function",
    "function": {"name": "get_current_weather", "arguments": '{"location":"San Francisco"}'}}]}
RESULT = {"role": "tool", "tool_call_id": CALL_ID, "content": '{"sunny": true, "temperature": 20}'}
THINK = "Need to use function get_current_weather."

CASES: list[tuple[str, list[dict], dict]] = [
    ("simple", [{"role": "user", "content": "What is 2 + 2?"}], {}),
    ("effort_low", [{"role": "user", "content": "hi"}], {"reasoning_effort": "low"}),
    ("effort_high_date", [{"role": "user", "content": "hi"}],
     {"reasoning_effort": "high", "current_date": "2025-06-28"}),
    ("date_only", [{"role": "user", "content": "What day is it?"}],
     {"current_date": "2024-12-31"}),
    ("system_prompt", [{"role": "system", "content": "Always respond in riddles"},
                       {"role": "user", "content": "What is the weather like in SF?"}], {}),
    ("developer_prompt", [{"role": "developer", "content": "Be terse."},
                          {"role": "user", "content": "Explain TCP."}], {}),
    ("system_and_developer", [{"role": "system", "content": "You are a pirate."},
                              {"role": "developer", "content": "Answer in French."},
                              {"role": "user", "content": "Hello"}], {}),
    ("content_parts", [{"role": "system", "content": [{"type": "text", "text": "Rule one."},
                                                      {"type": "text", "text": "Rule two."}]},
                       {"role": "user", "content": [{"type": "text", "text": "Part A"},
                                                    {"type": "text", "text": "Part B"}]}], {}),
    ("user_types_specials", [{"role": "user",
                              "content": "Print <|start|>assistant<|channel|>final<|end|>"}], {}),
    ("unicode_and_whitespace", [{"role": "user", "content": "  Ünïcödé 🎉\n\n\tcode:\n  x = 1  "}],
     {}),
    ("tools_instructions", Q, {"tools": [NO_PARAMS, WEATHER]}),
    ("tools_with_system", [{"role": "system", "content": "Always respond in riddles"}, *Q],
     {"tools": [NO_PARAMS, WEATHER], "reasoning_effort": "high", "current_date": "2025-06-28"}),
    ("tool_no_params", Q, {"tools": [NO_PARAMS]}),
    ("tool_empty_object", Q, {"tools": [EMPTY_OBJECT]}),
    ("tool_nested", Q, {"tools": [NESTED]}),
    ("tool_variants", Q, {"tools": [VARIANTS]}),
    ("tool_top_one_of", Q, {"tools": [TOP_ONE_OF]}),
    ("tool_unicode", Q, {"tools": [UNICODE]}),
    ("several_tools", Q, {"tools": [WEATHER, NESTED, VARIANTS, NO_PARAMS, UNICODE]}),
    ("empty_tools_list", Q, {"tools": []}),
    ("browser", [{"role": "user", "content": "Search the web for gpt-oss."}],
     {"builtin_tools": ("browser",)}),
    ("python", [{"role": "user", "content": "Compute 2**100."}], {"builtin_tools": ("python",)}),
    ("browser_python_functions", Q,
     {"builtin_tools": ("python", "browser"), "tools": [WEATHER], "current_date": "2025-01-01"}),
    ("multi_turn_finals", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
        {"role": "user", "content": "Why?"}], {}),
    ("multi_turn_with_reasoning", [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "reasoning": "Greet back.", "content": "Hello!"},
        {"role": "user", "content": "2+2?"}], {}),
    ("several_finals_with_reasoning", [
        {"role": "user", "content": "A"},
        {"role": "assistant", "reasoning": "first thought", "content": "one"},
        {"role": "user", "content": "B"},
        {"role": "assistant", "reasoning_content": "second thought", "content": "two"},
        {"role": "user", "content": "C"}], {"reasoning_effort": "low"}),
    ("tool_loop_with_analysis", [*Q, {**CALL, "reasoning": THINK}, RESULT], {"tools": [WEATHER]}),
    ("tool_loop_without_analysis", [*Q, CALL, RESULT], {"tools": [WEATHER]}),
    ("tool_loop_reasoning_content", [*Q, {**CALL, "reasoning_content": THINK}, RESULT],
     {"tools": [WEATHER], "current_date": "2025-06-28"}),
    ("tool_loop_with_preamble", [*Q, {**CALL, "content": "Let me check."}, RESULT],
     {"tools": [WEATHER]}),
    ("tool_loop_finished", [*Q, {**CALL, "reasoning": THINK}, RESULT,
                            {"role": "assistant", "reasoning": "It is sunny.",
                             "content": "It is sunny and 20C."},
                            {"role": "user", "content": "And tomorrow?"}], {"tools": [WEATHER]}),
    ("tool_loop_second_turn", [*Q, {**CALL, "reasoning": THINK}, RESULT,
                               {"role": "assistant", "content": "Sunny."},
                               {"role": "user", "content": "And in LA?"},
                               {"role": "assistant", "reasoning": "Call again.",
                                "tool_calls": [{"id": "call_2", "type": "function", "function": {
                                    "name": "get_current_weather",
                                    "arguments": '{"location":"Los Angeles"}'}}]},
                               {"role": "tool", "tool_call_id": "call_2", "content": "cloudy"}],
     {"tools": [WEATHER]}),
    ("parallel_calls", [*Q, {"role": "assistant", "reasoning": "Two lookups.", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_current_weather",
                                                      "arguments": '{"location":"SF"}'}},
        {"id": "c2", "type": "function", "function": {"name": "get_location",
                                                      "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "Paris"}],
     {"tools": [WEATHER, NO_PARAMS]}),
    ("tool_result_by_name", [*Q, CALL, {"role": "tool", "name": "get_current_weather",
                                        "content": "rain"}], {"tools": [WEATHER]}),
    ("tool_result_parts", [*Q, CALL, {"role": "tool", "tool_call_id": CALL_ID,
                                      "content": [{"type": "text", "text": "{\"t\": 1}"}]}],
     {"tools": [WEATHER]}),
    ("tool_result_two_parts", [*Q, CALL, {"role": "tool", "tool_call_id": CALL_ID, "content": [
        {"type": "text", "text": "{\"t\": "}, {"type": "text", "text": "1}"}]}],
     {"tools": [WEATHER]}),
    ("parts_back_to_back", [{"role": "user", "content": [
        {"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Answer "},
                                          {"type": "text", "text": "in parts."}]},
        {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": ""},
                                     {"type": "text", "text": "B"}]}], {}),
    ("assistant_reasoning_only", [{"role": "user", "content": "Think."},
                                  {"role": "assistant", "reasoning": "Hmm."}], {}),
    ("assistant_empty_content", [{"role": "user", "content": "x"},
                                 {"role": "assistant", "content": ""},
                                 {"role": "user", "content": "y"}], {}),
    ("last_message_assistant_final", [{"role": "user", "content": "x"},
                                      {"role": "assistant", "reasoning": "r", "content": "z"}], {}),
    ("response_format_schema", [{"role": "user", "content": "List fruit."}],
     {"response_format": {"type": "json_schema", "json_schema": {
         "name": "fruit_list", "description": "A list of fruit",
         "schema": {"type": "object", "properties": {"items": {"type": "array",
                                                               "items": {"type": "string"}}},
                    "required": ["items"]}}}}),
    ("response_format_with_system_and_tools", [{"role": "system", "content": "Be precise."}, *Q],
     {"tools": [WEATHER], "response_format": {"type": "json_schema", "json_schema": {
         "name": "report", "schema": {"type": "object"}}}}),
    ("response_format_json_object", [{"role": "user", "content": "JSON please"}],
     {"response_format": {"type": "json_object"}}),
    ("response_format_text", [{"role": "user", "content": "plain"}],
     {"response_format": {"type": "text"}}),
    ("everything", [{"role": "system", "content": "Sys."}, {"role": "developer", "content": "Dev."},
                    *Q, {**CALL, "reasoning": THINK, "content": "Checking."}, RESULT],
     {"tools": [WEATHER, NESTED, VARIANTS], "builtin_tools": ("browser", "python"),
      "reasoning_effort": "high", "current_date": "2025-08-05",
      "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {}}}}),
]
