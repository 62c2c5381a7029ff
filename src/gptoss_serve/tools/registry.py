"""Builds the enabled built-in tools from `ToolOptions` and says why any is off.

Owns the choice of which tools exist at start-up (python: the sandbox self-test decides; browser:
a corpus or an API key). Must not know how a tool works inside, nor argv or the environment.
"""

from __future__ import annotations

from gptoss_serve.tools.base import BuiltinTool, ToolOptions


def build_tools(options: ToolOptions) -> tuple[dict[str, BuiltinTool], list[str]]:
    """The enabled tools by OpenAI tool type, and start-up log lines (why a tool is off)."""
    tools: dict[str, BuiltinTool] = {}
    lines: list[str] = []
    for build in (_python, _browser):
        tool, line = build(options)
        if tool is not None:
            tools[tool.tool_type] = tool
        lines.append(line)
    return tools, lines


def _python(options: ToolOptions) -> tuple[BuiltinTool | None, str]:
    from gptoss_serve.tools import sandbox
    from gptoss_serve.tools.python_tool import PythonTool

    if options.python_tool == "off":
        return None, "python tool (code_interpreter): off (--python-tool off)"
    limits = f"timeout {options.python_timeout:g} s, memory {options.python_memory_mb} MiB"
    if options.python_tool == "unsafe-local":
        tool = PythonTool(timeout=options.python_timeout, memory_mb=options.python_memory_mb,
                          sandboxed=False)
        return tool, (f"python tool (code_interpreter): WARNING --python-tool unsafe-local: "
                      f"model-written code runs UNSANDBOXED as this server's user ({limits})")
    reason = sandbox.self_test()
    if reason is not None:
        return None, (f"python tool (code_interpreter): off, the host cannot sandbox: {reason} "
                      "(--python-tool unsafe-local runs it without a sandbox)")
    tool = PythonTool(timeout=options.python_timeout, memory_mb=options.python_memory_mb)
    return tool, (f"python tool (code_interpreter): on, bubblewrap sandbox without network "
                  f"({limits})")


def _browser(options: ToolOptions) -> tuple[BuiltinTool | None, str]:
    return None, "browser tool (web_search): off (not built yet)"
