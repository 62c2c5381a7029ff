"""The built-in tools' settings: serve flags -> ToolOptions -> build_tools and its log lines."""

from __future__ import annotations

import asyncio

import pytest

from gptoss_serve.cli import _tool_options, build_parser
from gptoss_serve.tools import sandbox
from gptoss_serve.tools.base import ToolOptions
from gptoss_serve.tools.registry import build_tools


def options(*argv: str) -> ToolOptions:
    return _tool_options(build_parser().parse_args(["serve", *argv]))


def test_flags_fill_tool_options(monkeypatch, tmp_path):
    monkeypatch.delenv("EXA_API_KEY", raising=False)
    assert options() == ToolOptions()
    got = options("--python-tool", "off", "--python-timeout", "7.5", "--python-memory-mb", "300",
                  "--browser-backend", "you", "--browser-corpus", str(tmp_path),
                  "--browser-api-key", "k", "--browser-search-url", "http://127.0.0.1:9",
                  "--browser-allow-private")
    assert got == ToolOptions(python_tool="off", python_timeout=7.5, python_memory_mb=300,
                              browser_backend="you", browser_corpus=str(tmp_path),
                              browser_api_key="k", browser_search_url="http://127.0.0.1:9",
                              browser_allow_private=True)
    monkeypatch.setenv("EXA_API_KEY", "from-env")
    assert options("--browser-backend", "exa").browser_api_key == "from-env"
    with pytest.raises(SystemExit, match="python_timeout must be > 0"):
        options("--python-timeout", "0")
    with pytest.raises(SystemExit):
        options("--python-tool", "docker")


def test_python_off_and_unsandboxable_hosts_say_why(monkeypatch):
    tools, lines = build_tools(ToolOptions(python_tool="off"))
    assert "code_interpreter" not in tools and "off (--python-tool off)" in lines[0]
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    tools, lines = build_tools(ToolOptions())
    assert "code_interpreter" not in tools
    assert "the host cannot sandbox: /nonexistent/bwrap not found" in lines[0]
    assert "--python-tool unsafe-local" in lines[0]


def test_unsafe_local_runs_with_a_warning():
    tools, lines = build_tools(ToolOptions(python_tool="unsafe-local", python_timeout=5))
    tool = tools["code_interpreter"]
    try:
        assert "WARNING" in lines[0] and "UNSANDBOXED" in lines[0]
        assert "Internet access for this session is UNKNOWN" in tool.description()["description"]
        assert asyncio.run(tool.run("u", "python", "y = 20")).text == ""
        assert asyncio.run(tool.run("u", "python", "y + 1")).text == "21\n"
    finally:
        tool.close()
