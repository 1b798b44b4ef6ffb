"""Sections to chunks: a token budget, an overlap, and the document's structure kept.

Paragraphs are packed into a chunk until the next would pass `budget` tokens; a chunk never
spans two headings or two pages (a citation names one page). The last `overlap` tokens' worth
of paragraphs (or words, for a paragraph longer than the budget) start the next chunk, so a
passage cut at a boundary is still found whole in one of them. Tokens are the embedder's own
when it can count them, else about 4/3 per word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parley.knowledge.parsing import Section

TokenCounter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    heading: str | None
    page: int | None


def approximate_tokens(texts: Sequence[str]) -> list[int]:
    return [max(1, (len(text.split()) * 4 + 2) // 3) for text in texts]


def chunk(sections: Sequence[Section], count: TokenCounter, budget: int, overlap: int) -> list[Chunk]:
    pieces = _fit(sections, count, budget)
    sizes = count([piece.text for piece in pieces]) if pieces else []
    chunks: list[Chunk] = []
    current: list[tuple[str, int]] = []
    key: tuple[str | None, int | None] | None = None
    used = 0
    for piece, size in zip(pieces, sizes, strict=True):
        piece_key = (piece.heading, piece.page)
        if current and (piece_key != key or used + size > budget):
            chunks.append(_joined(current, key))
            current = _tail(current, overlap) if piece_key == key else []
            used = sum(s for _, s in current)
            if used + size > budget:
                current, used = [], 0
        key = piece_key
        current.append((piece.text, size))
        used += size
    if current:
        chunks.append(_joined(current, key))
    return chunks


def _fit(sections: Sequence[Section], count: TokenCounter, budget: int) -> list[Section]:
    """Paragraphs longer than the budget split into runs of words that fit."""
    sizes = count([section.text for section in sections]) if sections else []
    fitted: list[Section] = []
    for section, size in zip(sections, sizes, strict=True):
        if size <= budget:
            fitted.append(section)
            continue
        words = section.text.split()
        step = max(1, len(words) * budget // size - 1)
        fitted.extend(
            Section(" ".join(words[i : i + step]), section.heading, section.page) for i in range(0, len(words), step)
        )
    return fitted


def _tail(parts: list[tuple[str, int]], overlap: int) -> list[tuple[str, int]]:
    if overlap <= 0:
        return []
    kept: list[tuple[str, int]] = []
    total = 0
    for text, size in reversed(parts):
        if total + size > overlap:
            if not kept:  # one long paragraph: carry its last words instead
                words = text.split()
                share = max(1, len(words) * overlap // max(size, 1))
                kept.append((" ".join(words[-share:]), min(size, overlap)))
            break
        kept.insert(0, (text, size))
        total += size
    return kept


def _joined(parts: list[tuple[str, int]], key: tuple[str | None, int | None] | None) -> Chunk:
    heading, page = key if key is not None else (None, None)
    return Chunk("\n\n".join(text for text, _ in parts), heading, page)
