"""Pages as the browser tool shows them: text with numbered links, wrapped lines, cursor displays.

Owns the conversion of HTML, Markdown and plain text into a `Page` (text in which each link
reads `【id†text】`, or `【id†text†domain】` for another site, plus the id -> URL table), the
search-results page, the `find` results page, and the display gpt-oss was trained on (the
conventions of openai/gpt-oss simple_browser): `[cursor] title (url)`, then
`**viewing lines [a - b] of n**`, then `L{i}: line`.
Must not know where pages come from (backends) nor the tool's sessions.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urljoin, urlparse

WRAP_WIDTH = 80
FIND_CONTEXT_LINES = 4
FIND_MAX_RESULTS = 50
_LINK_MARK = re.compile(r"【\d+†(?P<text>[^†】]+)(?:†[^†】]+)?】")
_MD_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]+)\]\((?P<url>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head", "iframe", "canvas",
              "title"}
_PARAGRAPH_TAGS = {"p", "ul", "ol", "table", "blockquote", "pre", "figure", "dl", "hr", "h1", "h2",
                   "h3", "h4", "h5", "h6"}  # a blank line before and after
_BLOCK_TAGS = {"div", "section", "article", "header", "footer", "main", "nav", "aside", "tr",
               "form", "figcaption", "dt", "dd", "br", "li", "body"}  # a line of their own


@dataclass
class Page:
    """One page in a browsing session. `links` maps the ids shown in `text` to URLs; `cite_url`
    is what a citation of this page points to ("" for a search-results page)."""

    url: str
    title: str
    text: str
    links: dict[int, str] = field(default_factory=dict)
    kind: str = "page"  # "page" | "search" | "find"
    cite_url: str = ""
    snippets: dict[int, str] = field(default_factory=dict)  # search hits' own text, by link id
    targets: dict[int, int] = field(default_factory=dict)  # find results: link id -> line

    def __post_init__(self) -> None:
        if not self.cite_url and self.kind == "page":
            self.cite_url = self.url

    def lines(self) -> list[str]:
        return wrap_lines(self.text)


def domain_of(url: str) -> str:
    return urlparse(url).netloc or urlparse("http://" + url).netloc


def clean_text(text: str) -> str:
    """Source text must not contain the citation brackets the model uses for links."""
    return text.replace("【", "〖").replace("】", "〗").replace("\u200b", "")


def _link_mark(link_id: int, text: str, url: str, base_domain: str) -> str:
    text = " ".join(text.replace("†", "‡").split()) or url
    domain = domain_of(url)
    if domain and domain != base_domain:
        return f"【{link_id}†{text}†{domain}】"
    return f"【{link_id}†{text}】"


class _LinkTable:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.base_domain = domain_of(base_url) if base_url else ""
        self.links: dict[int, str] = {}
        self._ids: dict[str, int] = {}

    def mark(self, href: str, text: str) -> str | None:
        """The `【id†text】` mark for a link, or None for links that lead nowhere useful."""
        href = href.strip()
        if not href or href.startswith(("#", "mailto:", "javascript:", "tel:", "data:")):
            return None
        url = urljoin(self.base_url, href)
        if urlparse(url).scheme not in ("http", "https", "corpus"):
            return None
        link_id = self._ids.get(url)
        if link_id is None:
            link_id = self._ids[url] = len(self.links)
            self.links[link_id] = url
        return _link_mark(link_id, text, url, self.base_domain)


class _HtmlText(HTMLParser):
    """HTML -> readable text: blocks on their own lines, headings as `#`, list items as `*`,
    links as marks, images as `[Image n: alt]`; scripts, styles and <head> dropped."""

    def __init__(self, table: _LinkTable) -> None:
        super().__init__(convert_charrefs=True)
        self.table = table
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False
        self._pre = 0
        self._link: tuple[str, list[str]] | None = None
        self._images = 0
        self._breaks = 0  # line breaks owed before the next text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "title":
            self._in_title = True
        if tag in _SKIP_TAGS:
            self._skip += 1
            return
        if self._skip:
            return
        self._break_for(tag)
        if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._emit("#" * int(tag[1]) + " ")
        elif tag == "li":
            self._emit("* ")
        elif tag == "pre":
            self._pre += 1
        elif tag in ("td", "th"):
            self._emit(" ")
        elif tag == "a" and "href" in attr and self._link is None:
            self._link = (attr["href"], [])
        elif tag == "img":
            alt = attr.get("alt") or attr.get("title")
            self._emit(f"[Image {self._images}: {alt}]" if alt else f"[Image {self._images}]")
            self._images += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
            return
        if self._skip:
            return
        if tag == "a" and self._link is not None:
            href, words = self._link
            self._link = None
            text = "".join(words)
            mark = self.table.mark(href, text)
            self._emit(mark if mark is not None else " ".join(text.split()))
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        self._break_for(tag)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._skip:
            return
        data = clean_text(data)
        if self._link is not None:
            self._link[1].append(data)
        elif self._pre:
            self._emit(data)
        elif data.strip() or not self._breaks:
            self._emit(re.sub(r"\s+", " ", data))

    def _emit(self, text: str) -> None:
        if self._link is not None:
            self._link[1].append(text)
            return
        if self._breaks and self.parts:
            self.parts.append("\n" * self._breaks)
        self._breaks = 0
        self.parts.append(text)

    def _break_for(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self._breaks = max(self._breaks, 2)
        elif tag in _BLOCK_TAGS:
            self._breaks = max(self._breaks, 1)

    def text(self) -> str:
        lines = [line.strip() if line.strip() else "" for line in "".join(self.parts).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_page(html: str, url: str, title: str | None = None) -> Page:
    """An HTML document as a page; the title is `title`, else <title>, else the domain."""
    table = _LinkTable(url)
    parser = _HtmlText(table)
    parser.feed(html)
    parser.close()
    final_title = clean_text(title or " ".join(parser.title.split()) or domain_of(url))
    return Page(url=url, title=final_title, text=_with_url(url, parser.text()),
                links=table.links)


def markdown_page(text: str, url: str, title: str | None = None) -> Page:
    """Markdown (or plain text): `[text](url)` links become marks; the title is `title`, else the
    first `# heading`, else a short first line, else the domain."""
    table = _LinkTable(url)
    body = clean_text(text)

    def replace(match: re.Match[str]) -> str:
        mark = table.mark(match.group("url"), match.group("text"))
        return mark if mark is not None else match.group(0)

    body = _MD_LINK.sub(replace, body)
    if not title:
        heading = re.search(r"^#\s+(.+)$", text, flags=re.MULTILINE)
        first = next((line.strip() for line in text.split("\n") if line.strip()), "")
        if heading:
            title = heading.group(1).strip()
        else:
            title = first if 0 < len(first) <= 100 else domain_of(url)
        title = strip_link_marks(clean_text(title))
    return Page(url=url, title=title, text=_with_url(url, body.strip()), links=table.links)


def _with_url(url: str, body: str) -> str:
    return f"\nURL: {url}\n{body}" if url else body


def body_text(page: Page) -> str:
    """The page's words without its URL line and link marks (what a search index should see)."""
    text = page.text
    if page.url and text.startswith(f"\nURL: {page.url}\n"):
        text = text[len(page.url) + 7:]
    return strip_link_marks(text)


@dataclass(frozen=True)
class Hit:
    """One search result. `text` is the page's text when the backend returned it (opening the
    link then needs no fetch)."""

    title: str
    url: str
    snippet: str
    text: str | None = None


def search_page(query: str, hits: list[Hit]) -> Page:
    """The results of one search as a page whose links are the hits."""
    table = _LinkTable("")
    rows = []
    snippets = {}
    for hit in hits:
        mark = table.mark(hit.url, clean_text(hit.title) or hit.url)
        if mark is None:
            continue
        snippet = " ".join(clean_text(hit.snippet).split())
        rows.append(f"* {mark} {snippet}".rstrip())
        if hit.text is not None:
            snippets[len(table.links) - 1] = hit.text
    body = "# Search Results\n\n" + ("\n".join(rows) if rows else f"No results for `{query}`.")
    return Page(url="", title=query, text=body, links=table.links, kind="search",
                snippets=snippets)


def wrap_lines(text: str, width: int = WRAP_WIDTH) -> list[str]:
    """Lines of at most `width` characters (words kept whole where possible), empty lines kept."""
    out: list[str] = []
    for line in text.split("\n"):
        if not line:
            out.append("")
            continue
        out.extend(textwrap.wrap(line, width=width, replace_whitespace=False,
                                 drop_whitespace=False) or [""])
    return out


def strip_link_marks(text: str) -> str:
    return _LINK_MARK.sub(lambda m: m.group("text"), text)


def find_page(page: Page, pattern: str) -> Page:
    """Case-insensitive exact matches of `pattern` in `page`, each with a few lines around it."""
    needle = pattern.lower()
    lines = strip_link_marks("\n".join(page.lines())).split("\n")
    chunks: list[str] = []
    targets: dict[int, int] = {}
    index = 0
    while index < len(lines) and len(chunks) < FIND_MAX_RESULTS:
        if needle in lines[index].lower():
            targets[len(chunks)] = index
            snippet = "\n".join(lines[index:index + FIND_CONTEXT_LINES])
            chunks.append(f"# 【{len(chunks)}†match at L{index}】\n{snippet}")
            index += FIND_CONTEXT_LINES
        else:
            index += 1
    text = "\n\n".join(chunks) if chunks else f"No `find` results for pattern: `{pattern}`"
    return Page(url=f"{page.url}/find?pattern={quote(pattern)}",
                title=f"Find results for text: `{pattern}` in `{page.title}`", text=text,
                links={i: page.url for i in range(len(chunks))}, kind="find",
                cite_url=page.cite_url, targets=targets)


def display(page: Page, cursor: int, loc: int, num_lines: int, view_chars: int) -> str:
    """`[cursor] title (url)`, the scrollbar, then lines loc.. numbered `L{i}: `. With
    num_lines <= 0, as many lines as fit in about `view_chars` characters (at least one).
    Raises ValueError for a loc past the end."""
    lines = page.lines()
    total = len(lines)
    if loc < 0:
        loc = 0
    if loc >= total:
        raise ValueError(f"Invalid location parameter: `{loc}`. "
                         f"Cannot exceed page maximum of {total - 1}.")
    if num_lines <= 0:
        end, used = loc, 0
        while end < total and (end == loc or used + len(lines[end]) + 8 <= view_chars):
            used += len(lines[end]) + 8
            end += 1
    else:
        end = min(total, loc + num_lines)
    body = "\n".join(f"L{i}: {lines[i]}" for i in range(loc, end))
    header = page.title + (f" ({_short(unquote(page.url))})" if page.url else "")
    return f"[{cursor}] {header}\n**viewing lines [{loc} - {end - 1}] of {total - 1}**\n\n{body}"


def _short(text: str, limit: int = 256) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
