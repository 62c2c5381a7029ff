"""The interface between the Responses tool loop and the built-in tools, and their settings.

Owns the shapes only: `ToolOutput` (what one call returns), the `BuiltinTool` protocol and
`ToolOptions` (the CLI settings, filled by cli.py). Must not know how any tool works, nor HTTP,
the engine or the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

PYTHON_MODES = ("sandbox", "off", "unsafe-local")
BROWSER_BACKENDS = ("local", "exa", "you")


@dataclass(frozen=True)
class ToolOutput:
    """The result of one built-in tool call.

    author: harmony author of the reply message ("python", "browser.search", "browser.open",
        "browser.find"); the reply is rendered as
        `<|start|>{author} to=assistant<|channel|>analysis<|message|>{text}<|end|>`.
    text: the reply body exactly as the model must see it.
    item: the Responses output item for this call, without "id" (the API layer assigns ids), e.g.
        {"type": "code_interpreter_call", "code": ..., "container_id": ..., "outputs": [...],
         "status": "completed"} or
        {"type": "web_search_call", "action": {"type": "search", "query": ...},
         "status": "completed"}.
    """

    author: str
    text: str
    item: dict[str, Any]


@runtime_checkable
class BuiltinTool(Protocol):
    """One built-in tool namespace. Implementations keep per-session state keyed by session_id
    (the Responses conversation id: the first response of a previous_response_id chain)."""

    namespace: str  # "python" | "browser" (the harmony recipient namespace)
    tool_type: str  # OpenAI tool type: "code_interpreter" | "web_search"
    # (the API layer accepts "web_search_preview" as an alias of "web_search")

    def description(self) -> dict[str, Any]:
        """The namespace config rendered into the harmony system message (same shape as
        harmony/builtin_tools.py's dicts), stating the real limits (e.g. the real timeout)."""
        ...

    async def run(self, session_id: str, recipient: str, body: str) -> ToolOutput:
        """Run one call. recipient is the full harmony recipient ("python", "browser.search",
        "browser.open", "browser.find"); body is the message text the model wrote (code for
        python, JSON arguments for browser). Never raises for bad model input: errors become
        the reply text. Cancellable (asyncio.CancelledError stops the work)."""
        ...

    def annotations(self, session_id: str, text: str) -> list[dict[str, Any]]:
        """url_citation annotations for the citations `【cursor†Lx-Ly】` in final text:
        [{"type": "url_citation", "start_index", "end_index", "url", "title"}] with indices into
        `text` (browser; python returns [])."""
        ...

    def close_session(self, session_id: str) -> None:
        """Forget one session's state (python: stop its kernel, delete its scratch dir)."""
        ...

    def close(self) -> None:
        """Stop every session; the tool is unusable afterwards."""
        ...


@dataclass(frozen=True)
class ToolOptions:
    """Settings of the built-in tools (cli.py fills them from `serve` flags).

    python_tool: "sandbox" (default: bubblewrap; off with a start-up line if the host cannot
        sandbox), "off", or "unsafe-local" (no sandbox, a warning at start-up).
    python_timeout: wall seconds per call (stated in the description the model sees).
    python_memory_mb: address-space limit of the kernel process.
    browser_backend: "local" (SQLite FTS5 over browser_corpus, no network), "exa" or "you".
    browser_corpus: folder of .html/.htm/.md/.txt files for the local backend (None: browser
        off for "local").
    browser_api_key: key of the HTTP backends (cli.py also reads $EXA_API_KEY / $YDC_API_KEY).
    browser_search_url: base URL override of the HTTP backend (tests: a fake server).
    browser_allow_private: allow `open` of private/loopback addresses (SSRF guard off).
    """

    python_tool: str = "sandbox"
    python_timeout: float = 120.0
    python_memory_mb: int = 1024
    browser_backend: str = "local"
    browser_corpus: str | None = None
    browser_api_key: str | None = None
    browser_search_url: str | None = None
    browser_allow_private: bool = False
    browser_max_page_bytes: int = 2_000_000

    def __post_init__(self) -> None:
        if self.python_tool not in PYTHON_MODES:
            raise ValueError(f"python_tool must be one of {PYTHON_MODES}, got {self.python_tool!r}")
        if self.browser_backend not in BROWSER_BACKENDS:
            raise ValueError(
                f"browser_backend must be one of {BROWSER_BACKENDS}, got {self.browser_backend!r}")
        if not self.python_timeout > 0:
            raise ValueError(f"python_timeout must be > 0, got {self.python_timeout}")
        if self.python_memory_mb < 64:
            raise ValueError(f"python_memory_mb must be >= 64, got {self.python_memory_mb}")
