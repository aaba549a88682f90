"""The worker: drain the queue into the outbox and deliver due rows, within the limits.

loop.py        Worker: drain, dispatch, pump (the Celery task), flush (``relay flush``)
delivery.py    Dispatcher: claim due rows, take limiter slots, send, record outcomes
transport.py   the HTTP client and one total deadline per request
retry.py       RetryPolicy: backoff with full jitter, attempt and age limits
full_redis.py  FullRedisWatch: a Celery worker drains a full Redis without wake-ups
metrics.py     the Prometheus counters the worker updates (a leaf)
failpoints.py  named points where fault tests stop a worker
group_commit.py a round's outcomes written together, each under its lease
"""
