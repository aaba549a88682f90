"""The Redis queue between ``enqueue()`` and the outbox.

wire.py       the item format: encode (enqueue), parse into NewEvent (drain, fallback)
consumer.py   Queue: take a batch into a processing list, ack, reap dead consumers
memory.py     how full Redis is (maxmemory), for the worker and ``relay status``
embedded.py   the embedded redis-server under the relay's home
lua/          the queue's scripts (take_batch, ack, heartbeat, worker_alive, reap)
"""

from relay.queue.consumer import Queue, consumer_id
from relay.queue.wire import Batch, NewEvent, encode, parse_items

__all__ = ["Batch", "NewEvent", "Queue", "consumer_id", "encode", "parse_items"]
