"""The `browser` built-in tool (OpenAI tool type `web_search`): search, open and find.

Owns the per-session page stack (a page's cursor is its index in the stack), the three functions'
argument handling and error texts, the `web_search_call` items, and turning citations
`【cursor†Lx-Ly】` in final text into `url_citation` annotations. Search is the backend's
(search_backends.py), fetching web_fetch.py's, how a page reads page.py's.
"""

from __future__ import annotations

import copy
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gptoss_serve.harmony.builtin_tools import BROWSER
from gptoss_serve.tools import page as pages
from gptoss_serve.tools.base import ToolOutput
from gptoss_serve.tools.page import Page
from gptoss_serve.tools.search_backends import BackendError, SearchBackend
from gptoss_serve.tools.web_fetch import Fetcher, FetchError

CITATION = re.compile(r"【(?P<cursor>\d+)†(?P<body>[^†】]+)(?:†[^†】]+)?】")
# web_search_call action types (the openai client's ActionSearch / ActionOpenPage / ActionFind)
_ACTIONS = {"search": "search", "open": "open_page", "find": "find_in_page"}
_TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown", "application/json", "text/csv")


class UsageError(Exception):
    """A call the model got wrong; the message is its reply."""


@dataclass
class _Session:
    stack: list[Page] = field(default_factory=list)
    by_url: dict[str, Page] = field(default_factory=dict)  # pages seen, for link clicks

    def page(self, cursor: int) -> Page:
        if not self.stack:
            raise UsageError("No pages to access!")
        if cursor == -1:
            return self.stack[-1]
        if not 0 <= cursor < len(self.stack):
            raise UsageError(f"Cursor `{cursor}` is out of range. "
                             f"Available cursor indices: [0 - {len(self.stack) - 1}].")
        return self.stack[cursor]


class BrowserTool:
    """BuiltinTool `browser` over one search backend."""

    namespace = "browser"
    tool_type = "web_search"

    def __init__(self, backend: SearchBackend, fetcher: Fetcher, *, max_results: int = 10,
                 view_chars: int = 4000, max_sessions: int = 256,
                 max_pages_per_session: int = 200) -> None:
        self.backend = backend
        self.fetcher = fetcher
        self.max_results = max_results
        self.view_chars = view_chars
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._max_sessions = max_sessions
        self._max_pages = max_pages_per_session

    # ---- the interface -------------------------------------------------------------------------
    def description(self) -> dict[str, Any]:
        config = copy.deepcopy(BROWSER)
        text = config["description"]
        config["description"] = text.replace("sources=web (default: web)",
                                             f"sources={self.backend.source} "
                                             f"(default: {self.backend.source})")
        return config

    async def run(self, session_id: str, recipient: str, body: str) -> ToolOutput:
        function = recipient.partition(".")[2]
        session = self._session(session_id)
        args = _arguments(body)
        action: dict[str, Any] = {"type": _ACTIONS.get(function, function)}
        if args is None:
            return _output(recipient, json.dumps({"error": "Invalid function arguments"}),
                           action, failed=True)
        try:
            if function == "search":
                action = {"type": "search", "query": str(args.get("query", ""))}
                text = await self._search(session, args)
            elif function == "open":
                text, url = await self._open(session, args)
                action = {"type": "open_page", "url": url}
            elif function == "find":
                text, url = self._find(session, args)
                action = {"type": "find_in_page", "url": url,
                          "pattern": str(args.get("pattern", ""))}
            else:
                return _output(recipient, json.dumps({"error": f"Unknown function: {function}"}),
                               action, failed=True)
        except (UsageError, BackendError, FetchError) as exc:
            return _output(recipient, str(exc), action, failed=True)
        return _output(recipient, text, action, failed=False)

    def annotations(self, session_id: str, text: str) -> list[dict[str, Any]]:
        session = self._sessions.get(session_id)
        if session is None:
            return []
        notes = []
        for match in CITATION.finditer(text):
            cursor = int(match.group("cursor"))
            if cursor >= len(session.stack) or not session.stack[cursor].cite_url:
                continue
            cited = session.stack[cursor]
            notes.append({"type": "url_citation", "start_index": match.start(),
                          "end_index": match.end(), "url": cited.cite_url,
                          "title": cited.title})
        return notes

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def close(self) -> None:
        self._sessions.clear()
        self.backend.close()

    # ---- the three functions --------------------------------------------------------------
    async def _search(self, session: _Session, args: dict[str, Any]) -> str:
        query = args.get("query")
        if not isinstance(query, str) or not query.strip():
            raise UsageError("`query` must be a non-empty string")
        try:
            hits = await self.backend.search(query, self.max_results)
        except BackendError as exc:
            raise BackendError(f"Error during search for `{query}`: {exc}") from None
        return self._show(session, pages.search_page(query, hits), 0, -1)

    async def _open(self, session: _Session, args: dict[str, Any]) -> tuple[str, str]:
        link = args.get("id", -1)
        cursor = _int(args, "cursor")
        loc = _int(args, "loc")
        num_lines = _int(args, "num_lines")
        if isinstance(link, str) and not link.lstrip("-").isdigit():
            page = await self._load(link, None)  # a URL typed in: always loaded afresh
        else:
            link = int(link) if isinstance(link, str) else link
            if not isinstance(link, int | float):
                raise UsageError("`id` must be a link number or a URL")
            current = session.page(cursor)
            if int(link) >= 0:
                url = current.links.get(int(link))
                if url is None:
                    raise UsageError(f"Invalid link id `{int(link)}`.")
                page = session.by_url.get(url) or await self._load(
                    url, current.snippets.get(int(link)))
                line = current.targets.get(int(link))
                if loc < 0 and line is not None:  # a find result: show the match in context
                    loc = line - 4 if line > 4 else line
            else:
                page = current  # scroll the page at `cursor`
        return self._show(session, page, max(loc, 0), num_lines), page.url

    def _find(self, session: _Session, args: dict[str, Any]) -> tuple[str, str]:
        pattern = args.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise UsageError("`pattern` must be a non-empty string")
        page = session.page(_int(args, "cursor"))
        if page.kind != "page":
            raise UsageError("Cannot run `find` on search results page or find results page")
        return self._show(session, pages.find_page(page, pattern), 0, -1), page.url

    # ---- helpers ---------------------------------------------------------------------------
    async def _load(self, url: str, known_text: str | None) -> Page:
        """A page by URL: the backend's own copy, the search hit's text, else a guarded fetch."""
        held = self.backend.lookup(url)
        if held is not None:
            return held
        if known_text is not None:
            return pages.markdown_page(known_text, url)
        try:
            fetched = await self.fetcher.fetch(url)
        except FetchError as exc:
            raise FetchError(f"Error fetching URL `{url}`: {exc}") from None
        if fetched.content_type in ("", "text/html", "application/xhtml+xml"):
            page = pages.html_page(fetched.text, fetched.url)
        elif fetched.content_type in _TEXT_TYPES:
            page = pages.markdown_page(fetched.text, fetched.url)
        else:
            raise FetchError(f"Error fetching URL `{url}`: cannot show content of type "
                             f"`{fetched.content_type}`")
        if fetched.truncated:
            page.text += (f"\n\n[page truncated: only the first {self.fetcher.max_bytes} bytes "
                          "were read]")
        return page

    def _show(self, session: _Session, page: Page, loc: int, num_lines: int) -> str:
        if len(session.stack) >= self._max_pages:
            raise UsageError(f"Too many pages opened in this conversation ({self._max_pages}).")
        try:
            shown = pages.display(page, len(session.stack), loc, num_lines, self.view_chars)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        session.stack.append(page)
        if page.kind == "page":
            session.by_url[page.url] = page
        return shown

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session()
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(session_id)
        return session


def _arguments(body: str) -> dict[str, Any] | None:
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _int(args: dict[str, Any], key: str) -> int:
    value = args.get(key, -1)
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
        raise UsageError(f"`{key}` should be an integer, not `{type(value).__name__}`")
    return int(value)


def _output(recipient: str, text: str, action: dict[str, Any], *, failed: bool) -> ToolOutput:
    item = {"type": "web_search_call", "action": action,
            "status": "failed" if failed else "completed"}
    return ToolOutput(author=recipient, text=text, item=item)
