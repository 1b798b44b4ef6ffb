# ruff: noqa: E501 (the labelled set reads best one passage a line)
"""Retrieval quality on a labelled set: questions whose answer is in a known passage.

The passages come in groups on one subject (networking, Python, PostgreSQL, a product's support
notes, science, cooking, money), so a passage's neighbours share its vocabulary, and they are
mixed into real distractor text (the standard library's docstrings). The questions are ones a
user would ask: some share only meaning with their passage (its words are not in them, where
keywords miss), some hinge on an exact error code, setting, version or name (which a vector of
averaged word embeddings blurs into its neighbours'). Hybrid retrieval must find the passage in
its top 5 for most questions and do better than vectors alone and keywords alone, by top-5
recall and by mean reciprocal rank; the figures print. And where a question's words are in
thousands of chunks (the keyword list then ranks by its rarer words), a rare word still finds its chunk.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from parley.knowledge.index import KEYWORD_RANK_BUDGET
from parley.knowledge.sqlite_index import SQLiteIndex
from tests.support.knowledge import knowledge_on

PASSAGES = {
    # networking
    "tcp_handshake": "TCP opens a connection with a three-way handshake: the client sends SYN, the server answers SYN-ACK, and the client replies ACK.",
    "tcp_slow_start": "TCP slow start begins with a small congestion window and doubles it every round trip until a packet is lost or the slow-start threshold is reached.",
    "tls": "In a TLS 1.3 handshake the client and server agree on session keys in a single round trip, and the server proves its identity with its certificate.",
    "dns": "A DNS resolver turns a host name into an IP address by asking a root server, then the top-level domain's servers, then the domain's authoritative server, caching each answer for its TTL.",
    "http_429": "HTTP status 429 Too Many Requests means the client went over a rate limit; the Retry-After header says how many seconds to wait before trying again.",
    "http_503": "HTTP status 503 Service Unavailable means the server is overloaded or down for maintenance; a client may try the request again later.",
    "udp": "UDP sends datagrams without a connection or delivery guarantees, which suits live video and games, where a late packet is worth nothing.",
    # Python
    "gil": "CPython's global interpreter lock lets only one thread run Python bytecode at a time, so CPU-bound threads do not run in parallel.",
    "gather": "asyncio.gather runs awaitables concurrently and returns their results in the order they were passed, not the order in which they finished.",
    "lru_cache": "functools.lru_cache remembers a function's recent results keyed by its arguments, so a repeated call with the same arguments returns at once.",
    "multiprocessing": "multiprocessing runs work in separate processes, each with its own interpreter and memory, so CPU-bound tasks can use every core.",
    "venv": "python -m venv .venv creates an isolated environment with its own site-packages, so one project's dependencies don't clash with another's.",
    # PostgreSQL
    "vacuum": "PostgreSQL's VACUUM reclaims the space left behind by deleted and updated rows; autovacuum runs it in the background once enough rows have changed.",
    "wal": "The write-ahead log records every change before the data files are updated, so after a crash the database replays it to recover committed transactions.",
    "max_connections": "The max_connections setting caps concurrent client sessions at 100 by default; each connection is a separate backend process with memory of its own.",
    # science
    "photosynthesis": "Plants turn sunlight, water and carbon dioxide into glucose and oxygen in their chloroplasts; the green pigment chlorophyll absorbs the light.",
    "mitochondria": "Mitochondria produce most of a cell's ATP by oxidising sugars and fats, which is why they are called the power plants of the cell.",
    "vaccines": "Vaccines train the immune system by showing it a harmless piece or copy of a pathogen, so memory cells respond fast to a real infection.",
    "penicillin": "Alexander Fleming noticed in 1928 that a mould, Penicillium, killed the bacteria around it; penicillin became the first widely used antibiotic.",
    "octopus": "An octopus has three hearts and blue blood, because its blood carries oxygen with copper-based hemocyanin instead of iron.",
    "moon_phases": "The moon's phases come from how much of its sunlit half faces the Earth as it orbits, a cycle of about 29.5 days.",
    "tides": "Ocean tides rise and fall twice a day mainly because the moon's gravity pulls the water on the near and far sides of the Earth.",
    "saturn": "Saturn's rings are made mostly of ice particles with some rock and dust, ranging from tiny grains to chunks as large as houses.",
    "everest": "Mount Everest, on the border of Nepal and China, rises 8,849 metres above sea level and was first climbed in 1953 by Tenzing Norgay and Edmund Hillary.",
    # cooking
    "sourdough": "A sourdough starter is flour and water fermented by wild yeast and lactic acid bacteria; it leavens bread without commercial yeast.",
    "bakers_yeast": "Baker's yeast, Saccharomyces cerevisiae, is sold dried or fresh in shops and makes a dough rise within an hour or two.",
    "espresso": "Espresso is brewed by forcing water at about nine bars of pressure through finely ground coffee for 25 to 30 seconds.",
    "maillard": "Searing browns meat through the Maillard reaction, in which amino acids and sugars react above about 140 °C and form new flavours.",
    # money
    "inflation": "Central banks raise interest rates to cool inflation: borrowing costs more, spending slows, and price growth eases.",
    "compound": "Compound interest earns interest on earlier interest as well as on the principal, so savings grow exponentially over time.",
}
# A product's support notes, written from templates as such notes are: each shares its section's
# opening, so their vectors are close and the one detail (a code, a setting, a version) is what tells them apart.
_LICENCE = "Licence errors: when the agent starts it checks its licence with the licence server; if the check fails, the agent stops, logs an error code and shows it in the tray. "
_SETTINGS = "Client settings live in client.toml; change a value there and restart the client for it to take effect. "
_RELEASES = "Release notes: updates install themselves at the next start, and Help, About shows the version you have. "
PASSAGES |= {
    "e4010": _LICENCE + "Error E4010 means no licence key is set: enter one under Settings, Licence.",
    "e4011": _LICENCE
    + "Error E4011 means the licence key is mistyped or unknown: copy it again from the welcome email.",
    "e4012": _LICENCE
    + "Error E4012 means the licence key has expired: renew it on the billing page, then restart the agent.",
    "e4013": _LICENCE
    + "Error E4013 means the licence key is valid but assigned to another machine: release it on the old machine first.",
    "e4014": _LICENCE
    + "Error E4014 means the agent could not reach the licence server: check the proxy settings and the firewall.",
    "e4015": _LICENCE
    + "Error E4015 means the licence is for an older major version: upgrade the licence or install the matching agent.",
    "e4016": _LICENCE
    + "Error E4016 means the machine's clock is more than five minutes off: correct the time and try again.",
    "backoff": _SETTINGS
    + "Set retry_backoff_ms to change how long the client waits before retrying a failed upload; the default is 250.",
    "max_attempts": _SETTINGS
    + "Set retry_max_attempts to change how many times the client retries a failed upload before giving up; the default is 5.",
    "upload_timeout": _SETTINGS
    + "Set upload_timeout_s to change how long the client waits for the server to accept an upload; the default is 60.",
    "chunk_size": _SETTINGS
    + "Set chunk_size_mb to change the size of the pieces a large upload is split into; the default is 8.",
    "parallel": _SETTINGS
    + "Set parallel_uploads to change how many files the client sends at the same time; the default is 3.",
    "log_level": _SETTINGS
    + "Set log_level to debug, info or warning to change how much the client writes to its log; the default is info.",
    "release_2141": _RELEASES + "Version 2.14.1 fixed signing in with single sign-on after the session had expired.",
    "release_2142": _RELEASES + "Version 2.14.2 fixed a crash when exporting a PDF with embedded fonts.",
    "release_2143": _RELEASES
    + "Version 2.14.3 fixed the memory leak in the PDF exporter that made long sessions slow down over time.",
    "release_2150": _RELEASES + "Version 2.15.0 added a dark theme and export to Markdown.",
    "release_2151": _RELEASES + "Version 2.15.1 fixed the search box losing focus while typing.",
    "billing_lead": "Priya Raman leads the billing team; questions about invoices and refunds go to her.",
    "support_lead": "Tomás Okafor leads the support team; questions about crashes and bug reports go to him.",
}
QUESTIONS = [
    # meaning only: few or none of the passage's words
    ("tcp_handshake", "What packets are exchanged before two machines can start talking over a reliable stream?"),
    ("tcp_slow_start", "Why does a new download start slowly and then speed up?"),
    ("dns", "How does my computer find out which server a website name points to?"),
    ("udp", "Which protocol do online games use when speed matters more than reliability?"),
    ("gil", "Why don't Python threads speed up CPU-heavy work?"),
    ("venv", "How do I keep each project's libraries separate from the others?"),
    ("vacuum", "How does Postgres get back disk space after lots of deletes?"),
    ("wal", "How does the database avoid losing committed data when the server loses power?"),
    ("photosynthesis", "How do green plants make their food from light?"),
    ("vaccines", "How does a jab prepare the body's defences against a disease?"),
    ("tides", "What makes the sea level go up and down each day?"),
    ("sourdough", "How can a loaf rise if I have no packet of yeast from the shop?"),
    ("maillard", "Why does a steak taste better when it is browned in a hot pan?"),
    ("inflation", "Why do central banks put interest rates up when prices climb?"),
    ("compound", "How does interest on interest make savings grow?"),
    # an exact term: a code, a setting, a version, a name, a number
    ("e4012", "What does E4012 mean?"),
    ("e4013", "I get E4013 when I start the agent, what should I do?"),
    ("e4016", "The agent stopped at start with E4016 in the tray, how do I fix it?"),
    ("e4011", "What is error E4011?"),
    ("backoff", "What is the default of retry_backoff_ms?"),
    ("chunk_size", "How big are the pieces with the default chunk_size_mb?"),
    ("parallel", "Can I change parallel_uploads?"),
    ("release_2143", "What changed in 2.14.3?"),
    ("release_2151", "What was fixed in 2.15.1?"),
    ("release_2143", "Which release stopped long sessions from getting slower?"),
    ("billing_lead", "Who is Priya Raman?"),
    ("support_lead", "What does Tomás Okafor do?"),
    ("max_connections", "What does max_connections limit?"),
    ("gather", "In what order does asyncio.gather return results?"),
    ("lru_cache", "What does lru_cache do?"),
    ("http_429", "What should a client do after a 429?"),
    ("tls", "How many round trips does TLS 1.3 need to agree on keys?"),
    ("everest", "Who first climbed Everest, and when?"),
    ("penicillin", "What did Fleming find in 1928?"),
    ("octopus", "Why is octopus blood blue?"),
    ("saturn", "What are the rings around Saturn made of?"),
    ("espresso", "What pressure is used to brew espresso coffee?"),
    ("mitochondria", "What do mitochondria make for the cell?"),
    ("octopus", "What is hemocyanin?"),
    ("everest", "Which mountain was first climbed in 1953?"),
    ("maillard", "What happens to meat above 140 °C?"),
    ("dns", "How long is a DNS answer cached?"),
    ("max_connections", "Why can't more than 100 clients connect to Postgres at once?"),
]
TOP = 5


def _distractors() -> list[str]:
    import asyncio
    import collections
    import functools
    import json
    import os
    import pathlib
    import re
    import shutil
    import subprocess

    modules = (os, re, json, pathlib, collections, inspect, asyncio, functools, shutil, subprocess)
    docs = [inspect.getdoc(m) or "" for module in modules for _, m in inspect.getmembers(module) if callable(m)]
    return [" ".join(d.split()) for d in docs if len(d) > 120][:300]


async def test_hybrid_retrieval_finds_the_passage_and_beats_either_list_alone(tmp_path: Path) -> None:
    async with knowledge_on(f"sqlite:///{tmp_path / 'parley.db'}") as kb:
        collection = await kb.create_collection("facts", None)
        document_of: dict[str, str] = {}
        for key, text in PASSAGES.items():
            document, _ = await kb.add_document(collection.id, None, text.encode(), title=key, filename=f"{key}.txt")
            document_of[document.id] = key
        for n, text in enumerate(_distractors()):
            await kb.add_document(collection.id, None, text.encode(), title=f"doc {n}", filename=f"d{n}.txt")
        await kb.wait_idle()

        recall: dict[str, float] = {}
        mrr: dict[str, float] = {}
        missed: dict[str, list[str]] = {}
        for mode in ("hybrid", "vector", "keyword"):
            ranks: list[int | None] = []
            for key, question in QUESTIONS:
                found = await kb.search(question, [collection.id], None, top_k=TOP, mode=mode)
                keys = [document_of.get(p.document_id) for p in found.passages]
                ranks.append(keys.index(key) + 1 if key in keys else None)
            recall[mode] = sum(r is not None for r in ranks) / len(ranks)
            mrr[mode] = sum(1 / r for r in ranks if r is not None) / len(ranks)
            missed[mode] = [key for (key, _), r in zip(QUESTIONS, ranks, strict=True) if r is None]
        print(f"\n{len(QUESTIONS)} questions, {len(PASSAGES)} passages among {len(_distractors())} distractors:")
        for mode in recall:
            print(
                f"  {mode:<8} top-{TOP} {recall[mode]:.2f}  MRR@{TOP} {mrr[mode]:.2f}  missed: {', '.join(missed[mode]) or '-'}"
            )
        assert recall["hybrid"] >= 0.8
        assert recall["hybrid"] > max(recall["vector"], recall["keyword"])
        assert mrr["hybrid"] > max(mrr["vector"], mrr["keyword"])


async def test_a_rare_word_finds_its_chunk_among_thousands_that_hold_the_common_ones(tmp_path: Path) -> None:
    index = SQLiteIndex(tmp_path / "parley.db")
    try:
        await index.create("vec_t", "kw_t", 8)
        common = [
            f"Upload settings: the client retries a failed upload, note {n}." for n in range(2 * KEYWORD_RANK_BUDGET)
        ]
        texts = [*common, "Upload settings: a failed upload with E5001 was larger than the limit."]
        await index.add("vec_t", "kw_t", list(range(1, len(texts) + 1)), texts, [[1.0] + [0.0] * 7] * len(texts))
        found = await index.keyword("kw_t", "c", "why did my failed upload say E5001 in the client settings", 5)
        assert found[0] == len(texts)
    finally:
        await index.aclose()
