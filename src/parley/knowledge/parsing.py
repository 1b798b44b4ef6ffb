"""Documents to text: plain text, Markdown, HTML (its main text) and PDF (page by page).

A parsed document is a list of sections, each with the heading it sits under and, for PDF, its
page: chunking keeps to those boundaries. `check` runs at upload (cheap: the format and, for a
PDF, that it opens), so a file Parley can't read is refused at once with nothing stored.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from parley.errors import InvalidRequest

MEDIA_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
SUPPORTED = frozenset(MEDIA_TYPES.values())
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class UnsupportedDocument(InvalidRequest):
    code = "unsupported_document"


@dataclass(frozen=True, slots=True)
class Section:
    """A paragraph (or block) of text, with the heading it sits under and its page (PDF, from 1)."""

    text: str
    heading: str | None = None
    page: int | None = None


def media_type_of(filename: str | None, declared: str | None, content: bytes) -> str:
    """The document's type: from its name's extension, else its declared type, else sniffed."""
    if filename:
        suffix = PurePosixPath(filename).suffix.lower()
        if suffix in MEDIA_TYPES:
            return MEDIA_TYPES[suffix]
    base = (declared or "").split(";")[0].strip().lower()
    if base in SUPPORTED:
        return base
    if content.startswith(b"%PDF-"):
        return "application/pdf"
    if base in ("", "application/octet-stream"):
        head = content[:512].lstrip().lower()
        return "text/html" if head.startswith((b"<!doctype html", b"<html")) else "text/plain"
    raise UnsupportedDocument(
        f"unsupported document type {base!r}: send plain text, Markdown, HTML or PDF", param="file"
    )


def check(content: bytes, media_type: str) -> None:
    """Refuse what can't be parsed (not UTF-8 text, a PDF that doesn't open or has no pages)."""
    if not content.strip():
        raise UnsupportedDocument("the document is empty", param="file")
    if media_type == "application/pdf":
        _pdf_reader(content)
    else:
        _decode(content)


def parse(content: bytes, media_type: str) -> list[Section]:
    """The document's sections, in order (CPU work: run it in a thread)."""
    if media_type == "application/pdf":
        return _parse_pdf(content)
    text = _decode(content)
    if media_type == "text/html":
        return _parse_html(text)
    if media_type == "text/markdown":
        return _parse_markdown(text)
    return [Section(p) for p in _paragraphs(text)]


def title_of(sections: list[Section], fallback: str) -> str:
    for section in sections:
        if section.heading:
            return section.heading[:200]
    return fallback


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnsupportedDocument("the document is not UTF-8 text (nor a PDF)", param="file") from None


def _paragraphs(text: str) -> list[str]:
    return [" ".join(block.split()) for block in _PARAGRAPH_BREAK.split(text) if block.strip()]


def _parse_markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    heading: str | None = None
    block: list[str] = []

    def flush() -> None:
        sections.extend(Section(p, heading) for p in _paragraphs("\n".join(block)))
        block.clear()

    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            flush()
            heading = match.group(2) or heading
        else:
            block.append(line)
    flush()
    return sections


def _parse_html(text: str) -> list[Section]:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(text)
    for node in tree.css("script, style, noscript, nav, header, footer, aside, form, svg, template"):
        node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body
    if root is None:
        return []
    sections: list[Section] = []
    heading: str | None = None
    for node in root.css("h1, h2, h3, h4, h5, h6, p, li, pre, blockquote, td, dd, dt"):
        words = " ".join(node.text(separator=" ").split())
        if not words:
            continue
        tag = node.tag or ""
        if tag in _HEADING_TAGS:
            heading = words
        elif node.parent is None or node.parent.tag not in ("li", "blockquote"):
            sections.append(Section(words, heading))
    if not sections:  # no block elements: the body's text, in paragraphs
        sections = [Section(p) for p in _paragraphs(root.text(separator="\n"))]
    return sections


def _pdf_reader(content: bytes) -> object:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(content))
        if len(reader.pages) == 0:
            raise UnsupportedDocument("the PDF has no pages", param="file")
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise UnsupportedDocument("the PDF is damaged or not a PDF", param="file", detail=repr(exc)) from None
    return reader


def _parse_pdf(content: bytes) -> list[Section]:
    from pypdf import PdfReader

    reader = _pdf_reader(content)
    assert isinstance(reader, PdfReader)
    sections: list[Section] = []
    for number, page in enumerate(reader.pages, start=1):
        sections.extend(Section(p, page=number) for p in _paragraphs(page.extract_text() or ""))
    return sections
