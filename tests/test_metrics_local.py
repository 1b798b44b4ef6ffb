"""The local model's queue in the metrics: the real SmolLM2, one reply decoded at a time, so a
second request waits, and /metrics shows it waiting and, afterwards, how long it waited."""

from __future__ import annotations

import threading
import time

import openai

from tests.support.llamacpp import LONG_PROMPT, SMOLLM2
from tests.support.process import free_port
from tests.support.server import running_parley
from tests.test_metrics import scrape, value


def test_a_request_waiting_for_the_local_model_shows_in_queue_length_and_wait_time() -> None:
    port = free_port()
    model = {**SMOLLM2, "parallel": 1, "cache_slots": 2, "defaults": {"temperature": 0}}
    with running_parley(models=[model], metrics_port=port, ready_timeout=300) as url:
        metrics = f"http://127.0.0.1:{port}/metrics"
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=300)

        def ask(prompt: str, max_tokens: int) -> None:
            client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens
            )

        assert value(scrape(metrics, {}), "parley_local_queue_length", model="smollm2") == 0
        first = threading.Thread(target=ask, args=(LONG_PROMPT, 60))
        first.start()
        while value(scrape(metrics, {}), "parley_streams_in_progress", model="smollm2") < 1:
            time.sleep(0.05)
        second = threading.Thread(target=ask, args=("Say hi.", 4))
        second.start()
        deadline = time.monotonic() + 60
        seen_waiting = False
        while not seen_waiting and time.monotonic() < deadline and second.is_alive():
            seen_waiting = value(scrape(metrics, {}), "parley_local_queue_length", model="smollm2") == 1
            time.sleep(0.05)  # (the server runs in this process: leave its threads the interpreter)
        first.join(300)
        second.join(300)
        assert not first.is_alive() and not second.is_alive()
        samples = scrape(metrics, {})

    assert seen_waiting, "the second request was never seen waiting for the model"
    assert value(samples, "parley_local_queue_length", model="smollm2") == 0
    assert value(samples, "parley_local_queue_wait_seconds_count", model="smollm2") == 2
    # The second waited for the first's reply to end.
    assert value(samples, "parley_local_queue_wait_seconds_sum", model="smollm2") > 0.05
    assert value(samples, "parley_generations_total", model="smollm2", outcome="complete") == 2
