"""Amazon SQS fair queues for moto's standard queues, as AWS documents them.

On AWS every standard queue is a fair queue once its messages carry a `MessageGroupId`: the group names
a tenant, and when one tenant uses a disproportionate share of the consumers, the queue hands out the
other tenants' messages first ("How Amazon SQS fair queues work", SQS Developer Guide). moto 5.2.5 stores
the group of a standard queue's message but hands messages out in arrival order, so a local stack would
show a noisy tenant delaying everyone, which AWS does not. `install()` changes the order in which moto's
`ReceiveMessage` considers a standard queue's visible messages; nothing else (visibility, receive counts,
dead-lettering, delays) changes.

What AWS documents, and how it is followed here:
- A tenant is a `MessageGroupId`; each message without one is a tenant of its own.
- A tenant is noisy while it has messages waiting and either holds more than 10% of the queue's
  in-flight messages with at least 30 of its own in flight (concurrency share), or took more than 10%
  of the consumers' recent processing time (processing-time share; here: receive to delete, over the
  last 60 seconds).
- Quiet tenants' messages are handed out first, in arrival order; then the noisy tenants', the one with
  the fewest in flight first. Nothing is dropped or throttled.
- A tenant stops being noisy when its backlog is drained, or after 5 minutes without sending.
AWS calls its thresholds approximate (a distributed system); these are exact, which is the point of an
emulator that tests are measured against. A queue tagged `jobpipe-emulator:fair-queues=off` hands its
messages out in arrival order, so a test can measure the same stack without fairness (AWS has no such
switch: there, a queue without fairness is one whose messages carry no group).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from moto.sqs.models import Message, Queue

SWITCH_TAG = "jobpipe-emulator:fair-queues"
CONCURRENCY_SHARE = 0.10
MIN_IN_FLIGHT = 30
PROCESSING_SHARE = 0.10
PROCESSING_WINDOW_MS = 60_000
QUIET_AFTER_MS = 5 * 60_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def tenant_of(message: Message) -> object:
    """The tenant a message belongs to: its group, or itself when it has none."""
    return message.group_id if message.group_id is not None else ("message", message.id)


class Usage:
    """One queue's recent processing time per tenant (receive to delete) and each tenant's last send."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed: deque[tuple[int, object, int]] = deque()
        self.last_sent: dict[object, int] = {}

    def __deepcopy__(self, memo: dict) -> "Usage":
        return self  # one queue's record, shared by any copy moto makes of the queue

    def sent(self, message: Message, now: int) -> None:
        with self.lock:
            self.last_sent[tenant_of(message)] = now

    def deleted(self, message: Message, now: int) -> None:
        received_at = getattr(message, "fair_received_at", None)
        if received_at is None:
            return
        with self.lock:
            self.processed.append((now, tenant_of(message), max(now - received_at, 1)))

    def processing_shares(self, now: int) -> dict[object, float]:
        with self.lock:
            while self.processed and self.processed[0][0] < now - PROCESSING_WINDOW_MS:
                self.processed.popleft()
            totals: dict[object, int] = defaultdict(int)
            for _, tenant, spent in self.processed:
                totals[tenant] += spent
        whole = sum(totals.values())
        return {tenant: spent / whole for tenant, spent in totals.items()} if whole else {}

    def sent_recently(self, tenant: object, now: int) -> bool:
        with self.lock:
            return now - self.last_sent.get(tenant, now) < QUIET_AFTER_MS


_USAGE_LOCK = threading.Lock()


def _usage(queue: Queue) -> Usage:
    with _USAGE_LOCK:
        return queue.__dict__.setdefault("_jobpipe_fair_usage", Usage())


def fair_order(queue: Queue, visible: list[Message], now: int | None = None) -> list[Message]:
    """`visible` (arrival order) in the order a fair queue hands it out."""
    if queue.fifo_queue or not visible or queue.tags.get(SWITCH_TAG) == "off":
        return visible
    # Only tenants with messages waiting can be noisy (a drained backlog ends it), and with one tenant
    # waiting there is no one to prefer.
    waiting = {tenant_of(message) for message in visible}
    if len(waiting) < 2:
        return visible
    now = _now_ms() if now is None else now
    in_flight: dict[object, int] = defaultdict(int)
    for message in list(queue._messages):
        if message.approximate_receive_count > 0 and not message.visible:
            in_flight[tenant_of(message)] += 1
    all_in_flight = sum(in_flight.values())
    usage = _usage(queue)
    processing = usage.processing_shares(now)

    def noisy(tenant: object) -> bool:
        if not usage.sent_recently(tenant, now):
            return False
        concurrency = in_flight[tenant] >= MIN_IN_FLIGHT and in_flight[tenant] > CONCURRENCY_SHARE * all_in_flight
        return concurrency or processing.get(tenant, 0.0) > PROCESSING_SHARE

    noisy_tenants = {tenant for tenant in waiting if noisy(tenant)}
    if not noisy_tenants:
        return visible
    ranked = sorted(
        enumerate(visible),
        key=lambda item: (
            tenant_of(item[1]) in noisy_tenants,
            in_flight[tenant_of(item[1])] if tenant_of(item[1]) in noisy_tenants else 0,
            item[0],
        ),
    )
    return [message for _, message in ranked]


def install() -> None:
    """Makes moto's standard queues fair (see the module docs). Idempotent."""
    if getattr(Queue, "_jobpipe_fair_queues", False):
        return
    Queue._jobpipe_fair_queues = True
    arrival_order = Queue.messages.fget
    original_add = Queue.add_message
    original_delete = Queue.delete_message
    original_mark_received = Message.mark_received

    def messages(self: Queue) -> list[Message]:
        return fair_order(self, arrival_order(self))

    def approximate_number_of_messages(self: Queue) -> int:
        return len(arrival_order(self))  # a count: the order is not needed

    def wait_for_messages(self: Queue, timeout: int) -> None:
        # A long poll only waits for any message: no order needed on each wake-up.
        with self._messages_lock:
            self._messages_lock.wait_for(lambda: arrival_order(self), timeout=timeout)

    def add_message(self: Queue, message: Message) -> None:
        _usage(self).sent(message, _now_ms())
        original_add(self, message)

    def delete_message(self: Queue, receipt_handle: str) -> None:
        deleted = [m for m in self._messages if m.had_receipt_handle(receipt_handle)]
        original_delete(self, receipt_handle)
        now = _now_ms()
        for message in deleted:
            _usage(self).deleted(message, now)

    def mark_received(self: Message, visibility_timeout: int | None = None) -> None:
        original_mark_received(self, visibility_timeout)
        self.fair_received_at = _now_ms()

    Queue.messages = property(messages)
    Queue.approximate_number_of_messages = property(approximate_number_of_messages)
    Queue.wait_for_messages = wait_for_messages
    Queue.add_message = add_message
    Queue.delete_message = delete_message
    Message.mark_received = mark_received
