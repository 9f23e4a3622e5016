"""The batching decision: a pure function of the queue and the time, tested without sleeping."""

import dataclasses

import pytest

from inferd.scheduler.batching import Send, Wait, next_batch


@dataclasses.dataclass
class Item:
    rows: int
    enqueued_at: float = 0.0
    shape_key: tuple = ()


def test_empty_queue_waits_for_arrivals():
    assert next_batch([], now=5.0, max_rows=8, max_delay_s=0.0) == Wait(None)


def test_single_request_runs_at_once_without_a_delay():
    assert next_batch([Item(1)], now=0.0, max_rows=64, max_delay_s=0.0) == Send(1)


def test_takes_as_many_rows_as_fit():
    queue = [Item(3), Item(3), Item(3), Item(3)]
    assert next_batch(queue, now=0.0, max_rows=8, max_delay_s=0.0) == Send(2)


def test_exactly_full_batch_is_sent_even_with_a_delay():
    queue = [Item(4), Item(4), Item(1)]
    assert next_batch(queue, now=0.0, max_rows=8, max_delay_s=10.0) == Send(2)


def test_delay_waits_for_the_rest_of_the_window():
    queue = [Item(1, enqueued_at=10.0), Item(1, enqueued_at=10.001)]
    assert next_batch(queue, now=10.002, max_rows=8, max_delay_s=0.005) == Wait(pytest.approx(0.003))


def test_delay_expired_sends_what_is_there():
    queue = [Item(1, enqueued_at=10.0), Item(2, enqueued_at=10.004)]
    assert next_batch(queue, now=10.005, max_rows=8, max_delay_s=0.005) == Send(2)


def test_batch_that_cannot_grow_is_not_delayed():
    # The third request does not fit: waiting could not make this batch fuller.
    queue = [Item(4, 0.0), Item(3, 0.0), Item(2, 0.0)]
    assert next_batch(queue, now=0.0, max_rows=8, max_delay_s=10.0) == Send(2)


def test_requests_with_other_shapes_wait_for_the_next_batch():
    queue = [Item(1, shape_key=((3,),)), Item(1, shape_key=((3,),)), Item(1, shape_key=((5,),)), Item(1, shape_key=((3,),))]
    assert next_batch(queue, now=0.0, max_rows=8, max_delay_s=10.0) == Send(2)


def test_unbatched_model_runs_one_request_at_a_time():
    assert next_batch([Item(1), Item(1)], now=0.0, max_rows=0, max_delay_s=10.0) == Send(1)
