"""The stage runner alone: threads, bounded queues, the first error, cancel."""
import queue
import threading

import pytest

from s2seg.core.stages import END, StageRunner

pytestmark = pytest.mark.timeout(30)


def producer(runner, out_q, n):
    for i in range(n):
        runner.put(out_q, i)
    runner.put(out_q, END)


def test_items_flow_through_bounded_queues_in_order():
    runner = StageRunner(threading.Event())
    q, seen = queue.Queue(1), []

    def consumer():
        while (item := runner.get(q)) is not END:
            seen.append(item)

    runner.run([("producer", producer, (runner, q, 50)), ("consumer", consumer, ())])
    assert seen == list(range(50)) and runner.error is None and not runner.stopped


def test_the_first_error_stops_every_stage_blocked_on_a_queue():
    runner = StageRunner(threading.Event())
    q = queue.Queue(1)
    error = ValueError("first")

    def failing():
        raise error

    runner.run([("producer", producer, (runner, q, 10**9)), ("consumer", failing, ())])  # the producer blocks on a full queue
    assert runner.error is error and runner.stage == "consumer" and runner.stopped
    assert not [t for t in threading.enumerate() if t.name.startswith("s2seg-")]


def test_a_cancel_from_another_thread_stops_the_stages():
    cancel = threading.Event()
    runner = StageRunner(cancel)
    q = queue.Queue(1)
    timer = threading.Timer(0.3, cancel.set)
    timer.start()
    runner.run([("producer", producer, (runner, q, 10**9))])
    timer.join()
    assert runner.error is None and runner.stopped
