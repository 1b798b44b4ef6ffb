"""The SQLite index searches vectors in memory: exactly, and never behind what is stored, whoever wrote it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parley.knowledge.sqlite_index import SQLiteIndex

DIMENSION = 16


def unit(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    return [float(x) for x in vector / np.linalg.norm(vector)]


async def test_search_follows_writes_of_this_index_and_of_another_process(tmp_path: Path) -> None:
    store = tmp_path / "parley.db"
    ours, theirs = SQLiteIndex(store), SQLiteIndex(store)  # (another SQLite connection: as another process)
    try:
        await ours.create("vec_c", "kw_c", DIMENSION)
        await ours.add("vec_c", "kw_c", [1, 2, 3], ["one", "two", "three"], [unit(1), unit(2), unit(3)])
        found = await ours.nearest("vec_c", unit(2), 3)
        assert found[0][0] == 2
        assert abs(found[0][1] - 1.0) < 1e-5 and found[1][1] < found[0][1]  # cosine, best first

        await ours.add("vec_c", "kw_c", [4], ["four"], [unit(4)])  # our own write: in memory at once
        assert (await ours.nearest("vec_c", unit(4), 1))[0][0] == 4
        await ours.remove("vec_c", "kw_c", [4])
        assert 4 not in [chunk for chunk, _ in await ours.nearest("vec_c", unit(4), 10)]

        await theirs.add("vec_c", "kw_c", [5], ["five"], [unit(5)])  # another writer: read again
        assert (await ours.nearest("vec_c", unit(5), 1))[0][0] == 5
        await theirs.remove("vec_c", "kw_c", [1])
        assert sorted(chunk for chunk, _ in await ours.nearest("vec_c", unit(1), 10)) == [2, 3, 5]
    finally:
        await ours.aclose()
        await theirs.aclose()
