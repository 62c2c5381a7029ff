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
    from gptoss_serve.tools.browser_tool import BrowserTool
    from gptoss_serve.tools.search_backends import ExaSearch, LocalCorpus, SearchBackend, YouSearch
    from gptoss_serve.tools.web_fetch import Fetcher

    name = "browser tool (web_search)"
    backend: SearchBackend
    if options.browser_backend == "local":
        if not options.browser_corpus:
            return None, f"{name}: off (the local backend needs --browser-corpus DIR)"
        try:
            corpus = LocalCorpus(options.browser_corpus, options.browser_max_page_bytes)
        except ValueError as exc:
            return None, f"{name}: off ({exc})"
        skipped = (f", {corpus.skipped} skipped: unreadable or over "
                   f"{options.browser_max_page_bytes} bytes" if corpus.skipped else "")
        backend = corpus
        what = f"local corpus {options.browser_corpus} ({corpus.size} documents{skipped})"
    else:
        if not options.browser_api_key:
            env = "EXA_API_KEY" if options.browser_backend == "exa" else "YDC_API_KEY"
            return None, (f"{name}: off (the {options.browser_backend} backend needs "
                          f"--browser-api-key or ${env})")
        kind = ExaSearch if options.browser_backend == "exa" else YouSearch
        backend = kind(options.browser_api_key, options.browser_search_url)
        what = f"{options.browser_backend} search at {backend.base_url}"
    fetcher = Fetcher(allow_private=options.browser_allow_private,
                      max_bytes=options.browser_max_page_bytes)
    guard = ("private addresses ALLOWED (--browser-allow-private)"
             if options.browser_allow_private else "private and loopback addresses refused")
    return BrowserTool(backend, fetcher), (
        f"{name}: on, {what}; open fetches at most {options.browser_max_page_bytes} bytes, "
        f"{guard}")
