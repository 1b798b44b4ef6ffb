"""`python -m tests.api_fuzz`: Schemathesis over every operation of a real `parley serve`.

Starts `parley serve` (fake models only, `parley.toml` here, a temporary data directory, a free
port), waits for `/ready`, and runs `schemathesis run --checks all` against its `/openapi.json`
with `schemathesis.toml`. Exits non-zero on any finding (a 5xx, a dropped connection, a response
the document doesn't allow), on fewer than PARLEY_FUZZ_MIN_CASES cases, or on a traceback in the
server's log. The seed is fixed, so a build fails because of a change, not by luck; set
PARLEY_FUZZ_SEED to explore further (a nightly job could use a random one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.process import PARLEY, free_port
from tests.support.server import wait_ready

HERE = Path(__file__).parent
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
DEFAULT_SEED = 20261201
MIN_CASES = 1000


def fuzz(work: Path) -> int:
    config = work / "parley.toml"
    config.write_text(f"data_dir = {json.dumps(str(work / 'data'))}\n" + (HERE / "parley.toml").read_text())
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [str(PARLEY), "serve", "--config", str(config), "--port", str(port)], stdout=output, stderr=output
        )
    try:
        wait_ready(base_url, timeout=60)
        status = _schemathesis(base_url, work / "report.json")
    finally:
        server.terminate()
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            print("api fuzz: parley serve did not stop within 40 s of SIGTERM; killed", file=sys.stderr)
            server.kill()
            server.wait()
    return max(status, _check_log(log.read_text()))


def _schemathesis(base_url: str, report: Path) -> int:
    seed = os.environ.get("PARLEY_FUZZ_SEED", str(DEFAULT_SEED))
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "all",
        # The one check off. A client chooses conversation ids: `POST /api/chat` with the id of a
        # deleted conversation starts a new one under that id (README, "Conversations"), so a later
        # GET rightly finds it, which the stateful phase reports as a deleted resource still
        # available (ST301). tests/test_conversations.py checks that a deleted conversation is gone.
        "--exclude-checks",
        "use_after_free",
        "--seed",
        seed,
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    status = subprocess.run(command, check=False).returncode
    if not report.exists():
        print("api fuzz: Schemathesis wrote no report", file=sys.stderr)
        return max(status, 1)
    cases = json.loads(report.read_text())["test_cases"]["generated"]
    minimum = int(os.environ.get("PARLEY_FUZZ_MIN_CASES", MIN_CASES))
    print(f"api fuzz: {cases} generated cases over every operation (seed {seed}; at least {minimum} required)")
    if cases < minimum:
        print(f"api fuzz: only {cases} cases ran, fewer than {minimum}", file=sys.stderr)
        return max(status, 1)
    return status


def _check_log(text: str) -> int:
    """A traceback in the server's log is a failure even when every response looked right."""
    if "Traceback" not in text:
        return 0
    print("api fuzz: the server logged a traceback:\n" + text, file=sys.stderr)
    return 1


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="parley-api-fuzz-") as work:
        return fuzz(Path(work))


if __name__ == "__main__":
    sys.exit(main())
