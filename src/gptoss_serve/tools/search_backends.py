"""Search backends of the browser tool behind one interface: a local corpus and two HTTP APIs.

Owns: `LocalCorpus` (a folder of .html/.htm/.md/.markdown/.txt files indexed in an in-memory
SQLite FTS5 table, ranked by bm25; no network), `ExaSearch` (POST {base}/search with `x-api-key`,
Exa's request and response shapes) and `YouSearch` (GET {base}/v1/search with `X-API-Key`,
You.com's `hits` / `results.web` shapes). Must not know sessions, cursors or how pages are shown.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

import httpx

from gptoss_serve.tools.page import Hit, Page, body_text, html_page, markdown_page

CORPUS_SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md", ".txt": "md"}
CORPUS_URL_PREFIX = "corpus://local/"
_CANONICAL = re.compile(
    r"<link[^>]+rel=[\"']canonical[\"'][^>]*href=[\"']([^\"']+)[\"']"
    r"|<meta[^>]+property=[\"']og:url[\"'][^>]*content=[\"']([^\"']+)[\"']", re.IGNORECASE)
_FRONT_URL = re.compile(r"\A---\s*\n(?:.*\n)*?url:\s*(\S+)\s*\n(?:.*\n)*?---\s*\n", re.MULTILINE)


class BackendError(Exception):
    """A search that failed; the message is what the model sees."""


class SearchBackend(Protocol):
    source: str  # what the namespace description names after `sources=`

    async def search(self, query: str, topn: int) -> list[Hit]: ...

    def lookup(self, url: str) -> Page | None:
        """A page the backend holds itself (no fetch), or None."""
        ...

    def close(self) -> None: ...


class LocalCorpus:
    """Documents from a folder, searched with SQLite FTS5. A document's URL is its canonical
    link (HTML), its front-matter `url:` (Markdown), else corpus://local/<relative path>."""

    source = "local"

    def __init__(self, folder: str | Path, max_bytes: int = 2_000_000) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"--browser-corpus {folder}: not a folder")
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("CREATE VIRTUAL TABLE docs USING fts5(title, body, url UNINDEXED,"
                         " tokenize='porter unicode61')")
        self._pages: dict[str, Page] = {}
        self.skipped = 0  # documents larger than max_bytes or unreadable (said at start-up)
        for path in sorted(self.folder.rglob("*")):
            kind = CORPUS_SUFFIXES.get(path.suffix.lower())
            if kind is None or not path.is_file():
                continue
            try:
                if path.stat().st_size > max_bytes:
                    raise OSError("too large")
                raw = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                self.skipped += 1
                continue
            page = self._parse(raw, kind, path.relative_to(self.folder).as_posix())
            self._pages[page.url] = page
            self._db.execute("INSERT INTO docs(title, body, url) VALUES (?, ?, ?)",
                             (page.title, body_text(page), page.url))
        self._db.commit()

    @property
    def size(self) -> int:
        return len(self._pages)

    @staticmethod
    def _parse(raw: str, kind: str, relative: str) -> Page:
        default_url = CORPUS_URL_PREFIX + relative
        if kind == "html":
            match = _CANONICAL.search(raw)
            url = (match.group(1) or match.group(2)) if match else default_url
            return html_page(raw, url)
        front = _FRONT_URL.match(raw)
        url = front.group(1) if front else default_url
        body = raw[front.end():] if front else raw
        return markdown_page(body, url)

    async def search(self, query: str, topn: int) -> list[Hit]:
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', "") + '"' for w in words)
        with self._lock:
            rows = self._db.execute(
                "SELECT title, url, snippet(docs, 1, '', '', ' … ', 24) FROM docs"
                " WHERE docs MATCH ? ORDER BY bm25(docs, 5.0, 1.0) LIMIT ?",
                (match, max(1, topn))).fetchall()
        return [Hit(title=title, url=url, snippet=" ".join(snippet.split()))
                for title, url, snippet in rows]

    def lookup(self, url: str) -> Page | None:
        page = self._pages.get(url)
        if page is None:
            return None
        return Page(url=page.url, title=page.title, text=page.text, links=dict(page.links))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _HttpSearch:
    """Shared plumbing of the HTTP search APIs (operator-configured base URL, key header)."""

    source = "web"
    default_base = ""

    def __init__(self, api_key: str, base_url: str | None = None, timeout: float = 20.0) -> None:
        self.api_key = api_key
        self.base_url = (base_url or self.default_base).rstrip("/")
        self.timeout = timeout

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with httpx.AsyncClient(timeout=self.timeout, trust_env=False) as client:
                response = await client.request(method, self.base_url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendError(f"search backend unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise BackendError(f"search backend error {response.status_code}: "
                               f"{response.text[:200]}")
        try:
            return response.json()
        except ValueError:
            raise BackendError("search backend sent a reply that is not JSON") from None

    def lookup(self, url: str) -> Page | None:
        return None

    def close(self) -> None:
        return None


class ExaSearch(_HttpSearch):
    """Exa: POST /search {"query", "numResults", "contents": {"text", "summary"}}."""

    default_base = "https://api.exa.ai"

    async def search(self, query: str, topn: int) -> list[Hit]:
        data = await self._call("POST", "/search", headers={"x-api-key": self.api_key}, json={
            "query": query, "numResults": topn, "contents": {"text": True, "summary": True}})
        hits = []
        for result in _records(data, "results"):
            url = str(result.get("url") or "")
            if url:
                text = result.get("text")
                hits.append(Hit(title=str(result.get("title") or url), url=url,
                                snippet=str(result.get("summary") or (text or "")[:300]),
                                text=str(text) if text else None))
        return hits


class YouSearch(_HttpSearch):
    """You.com: GET /v1/search?query=..&count=N, results in `hits` or `results.web`."""

    default_base = "https://api.ydc-index.io"

    async def search(self, query: str, topn: int) -> list[Hit]:
        data = await self._call("GET", "/v1/search", headers={"X-API-Key": self.api_key},
                                params={"query": query, "count": topn})
        records = _records(data, "hits") or _records(data.get("results") or {}, "web")
        hits = []
        for result in records[:topn]:
            url = str(result.get("url") or "")
            snippets = result.get("snippets") or []
            snippet = str(result.get("description") or " ".join(map(str, snippets[:2])))
            if url:
                hits.append(Hit(title=str(result.get("title") or url), url=url, snippet=snippet))
        return hits


def _records(data: Any, key: str) -> list[dict[str, Any]]:
    value = data.get(key) if isinstance(data, dict) else None
    return [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []
