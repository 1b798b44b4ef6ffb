"""Admission: what may refuse a generation before it begins, and hear how it ended.

Limits and budgets (the access package), metrics and usage records are gates. A gate's
`admit` runs once per generation, before anything is stored or generated; it may refuse with a
ParleyError (a 429), or return an Admission that the run is attached to when it begins, or
released when it never does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from parley.access.principal import Principal
from parley.chat.run import Run
from parley.models.base import ChatRequest
from parley.models.registry import ModelEntry


class Admission(Protocol):
    def attach(self, run: Run) -> None:
        """The generation began as `run` (e.g. settle a reservation in `run.on_end`)."""

    async def release(self) -> None:
        """The generation never began (a later check refused it, or storing the turn failed)."""


class Gate(Protocol):
    async def admit(self, principal: Principal, entry: ModelEntry, request: ChatRequest) -> Admission | None:
        """Refuse the generation (raise a ParleyError), or let it in; None: nothing to hear of it."""


class Admitted:
    """The admissions of one generation, all attached or all released together."""

    __slots__ = ("_admissions",)

    def __init__(self, admissions: Sequence[Admission] = ()) -> None:
        self._admissions = admissions

    def attach(self, run: Run) -> None:
        for admission in self._admissions:
            admission.attach(run)

    async def release(self) -> None:
        for admission in self._admissions:
            await admission.release()


NOTHING_ADMITTED = Admitted()


async def admit_all(gates: Sequence[Gate], principal: Principal, entry: ModelEntry, request: ChatRequest) -> Admitted:
    """Every gate's admission, or none: a refusal releases what earlier gates admitted."""
    if not gates:
        return NOTHING_ADMITTED
    admissions: list[Admission] = []
    try:
        for gate in gates:
            admission = await gate.admit(principal, entry, request)
            if admission is not None:
                admissions.append(admission)
    except BaseException:
        await Admitted(admissions).release()
        raise
    return Admitted(admissions)
