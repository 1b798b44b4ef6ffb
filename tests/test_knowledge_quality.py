# ruff: noqa: E501 (the labelled set reads best one passage a line)
"""Retrieval quality on a small labelled set: questions whose answer is in a known passage.

The passages are short factual paragraphs on distinct subjects, mixed into real distractor text
(the standard library's docstrings). Questions are worded differently from their passages, some
sharing key words, some only meaning. Hybrid retrieval must find the passage in its top 5 for
most questions, and do at least as well as vectors alone and keywords alone (the figures print).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from tests.support.knowledge import knowledge_on

PASSAGES = {
    "photosynthesis": "Plants turn sunlight, water and carbon dioxide into glucose and oxygen in their chloroplasts; the green pigment chlorophyll absorbs the light.",
    "everest": "Mount Everest, on the border of Nepal and China, rises 8,849 metres above sea level and was first climbed in 1953 by Tenzing Norgay and Edmund Hillary.",
    "penicillin": "Alexander Fleming noticed in 1928 that a mould, Penicillium, killed the bacteria around it; penicillin became the first widely used antibiotic.",
    "tcp": "TCP opens a connection with a three-way handshake: the client sends SYN, the server answers SYN-ACK, and the client replies ACK.",
    "sourdough": "A sourdough starter is flour and water fermented by wild yeast and lactic acid bacteria; it leavens bread without commercial yeast.",
    "marathon": "The marathon distance of 42.195 kilometres was fixed at the 1908 London Olympics so the race could finish in front of the royal box.",
    "octopus": "An octopus has three hearts and blue blood, because its blood carries oxygen with copper-based hemocyanin instead of iron.",
    "inflation": "Central banks raise interest rates to cool inflation: borrowing costs more, spending slows, and price growth eases.",
    "vaccines": "Vaccines train the immune system by showing it a harmless piece or copy of a pathogen, so memory cells respond fast to a real infection.",
    "bitcoin": "Bitcoin blocks are added by miners who search for a hash below a target; the difficulty adjusts every 2016 blocks to keep about ten minutes per block.",
    "saturn": "Saturn's rings are made mostly of ice particles with some rock and dust, ranging from tiny grains to chunks as large as houses.",
    "espresso": "Espresso is brewed by forcing water at about nine bars of pressure through finely ground coffee for 25 to 30 seconds.",
    "tides": "Ocean tides rise and fall twice a day mainly because the moon's gravity pulls the water on the near and far sides of the Earth.",
    "chess": "In chess, castling moves the king two squares towards a rook and puts that rook on the square the king crossed; neither may have moved before.",
    "honey": "Honey never spoils easily because it is low in water, acidic, and contains hydrogen peroxide made by an enzyme bees add.",
    "rainbow": "A rainbow appears when sunlight is refracted, reflected and dispersed inside raindrops, splitting white light into its colours.",
    "dna": "DNA is a double helix of two strands held together by base pairs: adenine with thymine, and cytosine with guanine.",
    "volcano": "Shield volcanoes like Mauna Loa grow from runny basalt lava that flows far before cooling, giving them broad gentle slopes.",
    "python_gil": "CPython's global interpreter lock lets only one thread run Python bytecode at a time, so CPU-bound threads do not run in parallel.",
    "compound": "Compound interest earns interest on earlier interest as well as on the principal, so savings grow exponentially over time.",
}
QUESTIONS = {
    "photosynthesis": "How do green plants make their food from light?",
    "everest": "Who first reached the summit of the world's highest mountain?",
    "penicillin": "Which antibiotic came from a mould discovered by accident?",
    "tcp": "What are the steps of the SYN handshake when a connection starts?",
    "sourdough": "How can bread rise without buying yeast?",
    "marathon": "Why is the marathon 42.195 km long?",
    "octopus": "Why is octopus blood blue?",
    "inflation": "Why do central banks put interest rates up when prices climb?",
    "vaccines": "How does a vaccine prepare the body's defences?",
    "bitcoin": "How does bitcoin keep blocks coming every ten minutes?",
    "saturn": "What are the rings around Saturn made of?",
    "espresso": "What pressure is used to brew espresso coffee?",
    "tides": "What makes the sea level go up and down each day?",
    "chess": "What are the rules for castling the king?",
    "honey": "Why does honey last so long without going bad?",
    "rainbow": "How is a rainbow formed after rain?",
    "dna": "Which bases pair up in the DNA double helix?",
    "volcano": "Why do shield volcanoes have gentle slopes?",
    "python_gil": "Why don't Python threads speed up CPU-heavy work?",
    "compound": "How does interest on interest make savings grow?",
}


def _distractors() -> list[str]:
    import collections
    import json
    import os
    import pathlib
    import re

    modules = (os, re, json, pathlib, collections, inspect)
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
        first: dict[str, float] = {}
        for mode in ("hybrid", "vector", "keyword"):
            ranks = []
            for key, question in QUESTIONS.items():
                found = await kb.search(question, [collection.id], None, top_k=5, mode=mode)
                keys = [document_of.get(p.document_id) for p in found.passages]
                ranks.append(keys.index(key) + 1 if key in keys else None)
            recall[mode] = sum(r is not None for r in ranks) / len(ranks)
            first[mode] = sum(r == 1 for r in ranks) / len(ranks)
        print(
            f"\n{len(QUESTIONS)} questions: "
            + ", ".join(f"{m} top-5 {recall[m]:.2f} top-1 {first[m]:.2f}" for m in recall)
        )
        assert recall["hybrid"] >= 0.7
        assert recall["hybrid"] >= max(recall["vector"], recall["keyword"])
