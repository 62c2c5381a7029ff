"""The browser tool: local FTS5 corpus, page display with cursors and line numbers, find,
citations -> url_citation, the HTTP search backends and fetching against a fake server on
127.0.0.1, the SSRF guard and the size limit. Expected texts are written out by hand from the
format gpt-oss was trained on (openai/gpt-oss simple_browser)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from openai.types.responses import ResponseFunctionWebSearch

from gptoss_serve.tools.base import ToolOptions
from gptoss_serve.tools.browser_tool import BrowserTool
from gptoss_serve.tools.registry import build_tools
from gptoss_serve.tools.search_backends import ExaSearch, LocalCorpus, YouSearch
from gptoss_serve.tools.web_fetch import Fetcher, FetchError

LONG = ("word " * 40).strip()  # 199 characters: wraps into three lines of at most 80


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    (tmp_path / "rust.md").write_text(
        "---\nurl: https://example.org/rust\n---\n# Rust\n\n"
        "Rust is a systems language with ownership. See [the book](https://doc.example/book).\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "python.html").write_text(
        "<html><head><title>Python</title><script>secret()</script></head><body>"
        "<h1>Python</h1><p>Python was created by Guido van Rossum.</p>"
        "<ul><li>Dynamic typing</li><li><a href='https://www.python.org/'>Official site</a></li>"
        "</ul></body></html>")
    (tmp_path / "long.txt").write_text(f"Long notes\n{LONG}\nlast line mentions zebra\n")
    (tmp_path / "ignored.bin").write_bytes(b"\x00zebra")
    return tmp_path


def make_tool(corpus: Path, **fetcher_args) -> BrowserTool:
    return BrowserTool(LocalCorpus(corpus), Fetcher(**fetcher_args))


def call(tool: BrowserTool, recipient: str, args: dict | str, session: str = "s"):
    body = args if isinstance(args, str) else json.dumps(args)
    return asyncio.run(tool.run(session, recipient, body))


# ---- local corpus and display -------------------------------------------------------------
def test_search_ranks_the_corpus_and_shows_results_with_links(corpus):
    tool = make_tool(corpus)
    out = call(tool, "browser.search", {"query": "who created Python?"})
    assert out.author == "browser.search"
    assert out.item == {"type": "web_search_call", "status": "completed",
                        "action": {"type": "search", "query": "who created Python?"}}
    lines = out.text.split("\n")
    assert lines[0] == "[0] who created Python?"
    assert lines[1].startswith("**viewing lines [0 - ") and lines[2] == ""
    assert lines[3] == "L0: # Search Results"
    assert lines[5].startswith("L2: * 【0†Python†local】 ")  # the best match first
    assert "Guido" in lines[5]
    assert "secret()" not in out.text and "zebra" not in out.text  # no script, no .bin
    nothing = call(tool, "browser.search", {"query": "qwertyuiop"})
    assert "No results for `qwertyuiop`." in nothing.text
    syntax = call(tool, "browser.search", {"query": '"unbalanced AND ( NEAR zebra*'})
    assert "【0†Long notes†local】" in syntax.text  # FTS5 operators in a query are just words


def test_open_shows_numbered_lines_cursor_and_url(corpus):
    tool = make_tool(corpus)
    out = call(tool, "browser.open", {"id": "https://example.org/rust"})
    assert out.text == (
        "[0] Rust (https://example.org/rust)\n"
        "**viewing lines [0 - 4] of 4**\n"
        "\n"
        "L0: \n"
        "L1: URL: https://example.org/rust\n"
        "L2: # Rust\n"
        "L3: \n"
        "L4: Rust is a systems language with ownership. See 【0†the book†doc.example】.")
    assert out.item["action"] == {"type": "open_page", "url": "https://example.org/rust"}


def test_html_page_and_clicking_a_search_result(corpus):
    tool = make_tool(corpus)
    call(tool, "browser.search", {"query": "Guido"})
    out = call(tool, "browser.open", {"id": 0})
    assert out.text == (
        "[1] Python (corpus://local/sub/python.html)\n"
        "**viewing lines [0 - 7] of 7**\n"
        "\n"
        "L0: \n"
        "L1: URL: corpus://local/sub/python.html\n"
        "L2: # Python\n"
        "L3: \n"
        "L4: Python was created by Guido van Rossum.\n"
        "L5: \n"
        "L6: * Dynamic typing\n"
        "L7: * 【0†Official site†www.python.org】")


def test_wrapping_scrolling_and_bad_locations(corpus):
    tool = make_tool(corpus)
    out = call(tool, "browser.open", {"id": "corpus://local/long.txt", "loc": 3, "num_lines": 2})
    first, second = LONG[:80], LONG[80:160]
    assert out.text.endswith(f"**viewing lines [3 - 4] of 6**\n\nL3: {first}\nL4: {second}")
    scrolled = call(tool, "browser.open", {"loc": 6})  # no id: scroll the current page
    assert scrolled.text.startswith("[1] Long notes (corpus://local/long.txt)\n")
    assert scrolled.text.endswith("L6: last line mentions zebra")
    bad = call(tool, "browser.open", {"loc": 7})
    assert bad.text == "Invalid location parameter: `7`. Cannot exceed page maximum of 6."
    assert bad.item["status"] == "failed"
    again = call(tool, "browser.open", {"cursor": 0, "loc": 0, "num_lines": 1})
    assert again.text.startswith("[2] ")  # the failed open took no cursor


def test_find_format_and_errors(corpus):
    tool = make_tool(corpus)
    call(tool, "browser.open", {"id": "corpus://local/long.txt"})
    out = call(tool, "browser.find", {"pattern": "ZEBRA"})
    assert out.text == (
        "[1] Find results for text: `ZEBRA` in `Long notes` "
        "(corpus://local/long.txt/find?pattern=ZEBRA)\n"
        "**viewing lines [0 - 1] of 1**\n"
        "\n"
        "L0: # 【0†match at L6】\n"
        "L1: last line mentions zebra")
    assert out.item["action"] == {"type": "find_in_page", "url": "corpus://local/long.txt",
                                  "pattern": "ZEBRA"}
    ResponseFunctionWebSearch.model_validate({"id": "ws_1", "status": "completed", **out.item})
    miss = call(tool, "browser.find", {"pattern": "giraffe", "cursor": 0})
    assert miss.text.endswith("L0: No `find` results for pattern: `giraffe`")
    on_find = call(tool, "browser.find", {"pattern": "x"})
    assert on_find.text == "Cannot run `find` on search results page or find results page"


def test_bad_calls_become_replies(corpus):
    tool = make_tool(corpus)
    assert call(tool, "browser.open", {}).text == "No pages to access!"
    assert call(tool, "browser.find", "not json").text == '{"error": "Invalid function arguments"}'
    assert call(tool, "browser.fly", {}).text == '{"error": "Unknown function: fly"}'
    call(tool, "browser.search", {"query": "rust"})
    assert call(tool, "browser.open", {"id": 9}).text == "Invalid link id `9`."
    assert call(tool, "browser.open", {"cursor": 5}).text == (
        "Cursor `5` is out of range. Available cursor indices: [0 - 0].")
    assert "non-empty" in call(tool, "browser.search", {"query": ""}).text


def test_citations_become_url_citations(corpus):
    tool = make_tool(corpus)
    call(tool, "browser.search", {"query": "rust"})          # cursor 0: a results page
    call(tool, "browser.open", {"id": "https://example.org/rust"})   # cursor 1
    call(tool, "browser.find", {"pattern": "ownership"})     # cursor 2: cites the page found in
    text = "Rust has ownership 【1†L4】, see 【2†L0-L1】; not 【0†L2】 nor 【7†L1】."
    notes = tool.annotations("s", text)
    assert [text[n["start_index"]:n["end_index"]] for n in notes] == ["【1†L4】", "【2†L0-L1】"]
    assert all(n["type"] == "url_citation" and n["url"] == "https://example.org/rust"
               and n["title"] in ("Rust", "Find results for text: `ownership` in `Rust`")
               for n in notes)
    assert tool.annotations("other-session", text) == []


def test_sessions_have_their_own_cursors(corpus):
    tool = make_tool(corpus)
    call(tool, "browser.open", {"id": "https://example.org/rust"}, session="a")
    assert call(tool, "browser.open", {"loc": 1}, session="b").text == "No pages to access!"
    assert call(tool, "browser.open", {"loc": 1}, session="a").text.startswith("[1] Rust")


def test_registry_and_description(corpus):
    tools, lines = build_tools(ToolOptions(python_tool="off"))
    assert tools == {} and "needs --browser-corpus" in lines[1]
    tools, lines = build_tools(ToolOptions(python_tool="off", browser_backend="exa"))
    assert tools == {} and "EXA_API_KEY" in lines[1]
    tools, lines = build_tools(ToolOptions(python_tool="off", browser_corpus=str(corpus)))
    assert "(3 documents)" in lines[1] and "refused" in lines[1]
    (corpus / "huge.txt").write_text("x" * 2000)
    _, lines = build_tools(ToolOptions(python_tool="off", browser_corpus=str(corpus),
                                       browser_max_page_bytes=1000))
    assert "(3 documents, 1 skipped: unreadable or over 1000 bytes)" in lines[1]
    description = tools["web_search"].description()
    assert description["name"] == "browser"
    assert description["description"].endswith("sources=local (default: local)")
    assert [t["name"] for t in description["tools"]] == ["search", "open", "find"]


# ---- a fake web on 127.0.0.1 --------------------------------------------------------------------
class FakeWeb:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, bytes]] = []
        web = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                web.requests.append(("GET", self.path, dict(self.headers), b""))
                self._answer(*web.route_get(self.path, self.headers))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                web.requests.append(("POST", self.path, dict(self.headers), body))
                self._answer(*web.route_post(self.path, self.headers, body))

            def _answer(self, status: int, ctype: str, body: bytes, extra: dict) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def route_get(self, path: str, headers) -> tuple[int, str, bytes, dict]:
        if path.startswith("/v1/search"):
            if headers.get("X-API-Key") != "you-key":
                return 401, "application/json", b'{"error": "bad key"}', {}
            hits = {"hits": [{"url": "https://you.example/a", "title": "You A",
                              "description": "first you hit", "snippets": ["s1"]}]}
            return 200, "application/json", json.dumps(hits).encode(), {}
        if path == "/page.html":
            html = "<html><title>Fake page</title><body><p>Hello from the fake web.</p></body>"
            return 200, "text/html; charset=utf-8", html.encode(), {}
        if path == "/big":
            return 200, "text/plain", b"0123456789" * 5000, {}
        if path == "/image":
            return 200, "image/png", b"\x89PNG", {}
        if path == "/to-page":
            return 302, "text/plain", b"", {"Location": "/page.html"}
        if path == "/to-other-host":
            return 302, "text/plain", b"", {"Location": f"http://127.0.0.2:{self.port}/page.html"}
        return 404, "text/plain", b"no", {}

    def route_post(self, path: str, headers, body: bytes) -> tuple[int, str, bytes, dict]:
        if path == "/search" and headers.get("x-api-key") == "exa-key":
            query = json.loads(body)["query"]
            results = {"results": [
                {"title": f"Exa result for {query}", "url": "https://exa.example/one",
                 "summary": "a summary", "text": "# One\n\nFull text of one."},
                {"title": "Two", "url": "https://exa.example/two", "summary": "second"}]}
            return 200, "application/json", json.dumps(results).encode(), {}
        return 401, "application/json", b'{"error": "bad key"}', {}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def web():
    fake = FakeWeb()
    yield fake
    fake.close()


def test_exa_backend(web):
    tool = BrowserTool(ExaSearch("exa-key", web.base), Fetcher())
    out = call(tool, "browser.search", {"query": "fish"})
    method, path, headers, body = web.requests[-1]
    assert (method, path) == ("POST", "/search")
    assert json.loads(body)["query"] == "fish" and json.loads(body)["numResults"] == 10
    assert "L2: * 【0†Exa result for fish†exa.example】 a summary" in out.text
    assert "L3: * 【1†Two†exa.example】 second" in out.text
    seen = len(web.requests)
    opened = call(tool, "browser.open", {"id": 0})  # the hit's own text: no fetch
    assert opened.text.startswith("[1] One (https://exa.example/one)\n")
    assert "Full text of one." in opened.text and len(web.requests) == seen
    wrong = call(BrowserTool(ExaSearch("nope", web.base), Fetcher()), "browser.search",
                 {"query": "fish"})
    assert wrong.text.startswith("Error during search for `fish`: search backend error 401")
    assert wrong.item["status"] == "failed"


def test_you_backend(web):
    tool = BrowserTool(YouSearch("you-key", web.base), Fetcher())
    out = call(tool, "browser.search", {"query": "birds"})
    assert web.requests[-1][1].startswith("/v1/search?query=birds")
    assert "L2: * 【0†You A†you.example】 first you hit" in out.text


# ---- fetching: the SSRF guard and the size limit -----------------------------------------------
def test_private_and_loopback_addresses_are_refused(web, corpus):
    tool = make_tool(corpus)
    for url in [f"{web.base}/page.html", f"http://localhost:{web.port}/page.html",
                "http://10.1.2.3/", "http://[::1]/", "http://169.254.169.254/latest/meta-data"]:
        out = call(tool, "browser.open", {"id": url})
        assert "private or local address" in out.text, url
        assert out.item["status"] == "failed"
    assert "only http and https" in call(tool, "browser.open", {"id": "file:///etc/passwd"}).text
    assert web.requests == []  # nothing reached the server


def test_name_resolving_to_loopback_is_refused_and_checked_address_is_used(web):
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "site.test" else []

    with pytest.raises(FetchError, match="private or local"):
        asyncio.run(Fetcher(resolver=resolver).fetch(f"http://site.test:{web.port}/page.html"))
    assert web.requests == []
    pinned = Fetcher(resolver=resolver, address_allowed=lambda ip: True)
    fetched = asyncio.run(pinned.fetch(f"http://site.test:{web.port}/to-page"))
    assert fetched.url == f"http://site.test:{web.port}/page.html"  # the redirect followed
    assert "Hello from the fake web." in fetched.text
    assert [r[2]["Host"] for r in web.requests] == [f"site.test:{web.port}"] * 2


def test_redirects_are_checked_again(web):
    only_first = Fetcher(address_allowed=lambda ip: str(ip) == "127.0.0.1")
    with pytest.raises(FetchError, match=r"private or local address \(127\.0\.0\.2\)"):
        asyncio.run(only_first.fetch(f"{web.base}/to-other-host"))
    assert [r[1] for r in web.requests] == ["/to-other-host"]


def test_allow_private_opens_html_and_limits_size(web, corpus):
    tool = make_tool(corpus, allow_private=True, max_bytes=10_000)
    out = call(tool, "browser.open", {"id": f"{web.base}/page.html"})
    assert out.text.startswith(f"[0] Fake page ({web.base}/page.html)\n")
    assert "L2: Hello from the fake web." in out.text
    big = call(tool, "browser.open", {"id": f"{web.base}/big", "num_lines": 500})
    assert "[page truncated: only the first 10000 bytes were read]" in big.text
    assert big.text.count("0123456789") == 1000  # 10 000 bytes, not 50 000
    image = call(tool, "browser.open", {"id": f"{web.base}/image"})
    assert "cannot show content of type `image/png`" in image.text
    missing = call(tool, "browser.open", {"id": f"{web.base}/nothing"})
    assert "HTTP 404" in missing.text


def test_a_find_result_link_opens_the_page_at_the_match(corpus):
    (corpus / "many.md").write_text("# Many\n\n" + "\n".join(f"line {i}" for i in range(20))
                                    + "\nthe needle is here\n")
    tool = make_tool(corpus)
    call(tool, "browser.open", {"id": "corpus://local/many.md"})
    call(tool, "browser.find", {"pattern": "needle"})
    out = call(tool, "browser.open", {"id": 0, "num_lines": 5})
    # the match is page line 24 (blank L0, URL, title, blank, 20 numbered lines): shown from L20
    assert "**viewing lines [20 - 24] of 24**" in out.text
    assert out.text.endswith("L24: the needle is here")


def test_clicking_a_link_again_uses_the_page_already_seen(web, corpus):
    (corpus / "links.md").write_text(f"# Links\n\nSee [the fake page]({web.base}/page.html).\n")
    tool = make_tool(corpus, allow_private=True)
    call(tool, "browser.open", {"id": "corpus://local/links.md"})
    first = call(tool, "browser.open", {"cursor": 0, "id": 0})
    again = call(tool, "browser.open", {"cursor": 0, "id": 0})
    assert first.text.startswith("[1] Fake page") and again.text.startswith("[2] Fake page")
    assert [r[1] for r in web.requests] == ["/page.html"]  # fetched once
    typed = call(tool, "browser.open", {"id": f"{web.base}/page.html"})  # typed: fetched afresh
    assert typed.text.startswith("[3] Fake page") and len(web.requests) == 2
