"""Builds the enabled built-in tools from `ToolOptions` and says why any is off.

Owns the choice of which tools exist at start-up. Must not know how a tool works inside.
"""

from __future__ import annotations

from gptoss_serve.tools.base import BuiltinTool, ToolOptions


def build_tools(options: ToolOptions) -> tuple[dict[str, BuiltinTool], list[str]]:
    """The enabled tools by OpenAI tool type, and start-up log lines (why a tool is off)."""
    tools: dict[str, BuiltinTool] = {}
    lines: list[str] = ["built-in tools: not built yet (python and browser are off)"]
    return tools, lines
