"""aiohttp routes: both documented APIs plus the ``/_sandbox/*`` control endpoints.

Order of checks on an API request (each step can answer early):

1. injected faults, if switched on for this API: latency, misdirect (a website's answer),
   drop, outage, error_rate;
2. authentication → 401 (missing, malformed or revoked key);
3. ``force_429`` fault, then the sliding-window rate limit → 429 with ``Retry-After``;
4. body validation → 400, unknown Servoki site → 404;
5. store → 202 (Servoki, duplicates included) or 204 (DataLook); the ``trickle`` fault sends
   the answer's body a piece at a time.

Every request is tracked while it is open: one that arrives while another for the same event
is still open counts in ``overlapping`` (the relay promises there is never one).

API keys are never echoed back or logged; DataLook scopes are key ids, which are not secret.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from relay.errors import ConfigError

try:
    from aiohttp import web
except ModuleNotFoundError as exc:  # a production install leaves the sandbox's server out
    raise ConfigError(
        "the sandbox needs aiohttp, which a production install of relay leaves out: "
        "install the sandbox extra (pip install 'relay[sandbox]', or -e '.[sandbox]' from a "
        "checkout)"
    ) from exc

from relay.dev.sandbox.state import APIS, Api, Faults, SandboxConfig, SandboxState, StoredEvent
from relay.dev.sandbox.validation import InvalidBody, datalook_event, decode_object, servoki_site

STATE: Final = web.AppKey("sandbox_state", SandboxState)

_SERVOKI_KEY_RE: Final = re.compile(r"servoki_\S+")
_DATALOOK_KEY_RE: Final = re.compile(r"dl_live_([A-Za-z0-9]+)_[A-Za-z0-9]+")
_UNKNOWN_SCOPE: Final = "-"


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _too_many(retry_after: int) -> web.Response:
    response = _error(429, f"rate limit exceeded, retry after {retry_after} s")
    response.headers["Retry-After"] = str(retry_after)
    return response


def _bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _authenticate(api: Api, request: web.Request, revoked: set[str]) -> tuple[str, str | None]:
    """Return (rate-limit scope, 401 message or None when the key is good)."""
    token = _bearer_token(request)
    if api == "servoki":
        scope = request.remote or _UNKNOWN_SCOPE
        if token is None or _SERVOKI_KEY_RE.fullmatch(token) is None:
            return scope, "missing or malformed API key: send Authorization: Bearer servoki_..."
    else:
        match = None if token is None else _DATALOOK_KEY_RE.fullmatch(token)
        if match is None:
            return _UNKNOWN_SCOPE, (
                "missing or malformed API key: send Authorization: Bearer dl_live_<key_id>_<secret>"
            )
        scope = match.group(1)
    if token in revoked:
        return scope, "API key has been revoked"
    return scope, None


def _abort(request: web.Request) -> web.Response:
    # Closing the transport before aiohttp writes anything makes the client see a connection
    # reset with no response at all; the Response returned below is never sent.
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


def _servoki_outcome(
    state: SandboxState, raw: bytes, t: float, wall: float, scope: str
) -> web.Response:
    api = state.servoki
    try:
        body = decode_object(raw)
        site = servoki_site(body)
    except InvalidBody as exc:
        return _error(400, str(exc), field=exc.field)
    if site not in state.config.sites:
        return _error(404, f"unknown site {site!r}", field="site")
    event_id = body.get("event_id")
    if event_id is not None:
        if event_id in state.seen_event_ids:
            api.duplicates += 1
            return web.json_response({"status": "accepted"}, status=202)
        state.seen_event_ids.add(event_id)
    api.accepted += 1
    api.events.append(StoredEvent(body, t, wall, scope))
    return web.json_response({"status": "accepted"}, status=202)


def _datalook_outcome(
    state: SandboxState, raw: bytes, t: float, wall: float, scope: str
) -> web.Response:
    api = state.datalook
    try:
        body, stripped = datalook_event(decode_object(raw))
    except InvalidBody as exc:
        return _error(400, str(exc), field=exc.field)
    api.accepted += 1
    api.pii_stripped += stripped
    api.events.append(StoredEvent(body, t, wall, scope))
    return web.Response(status=204)


_Outcome = Callable[[SandboxState, bytes, float, float, str], web.Response]


def _event_key(api_name: Api, raw: bytes) -> str | None:
    """What makes two requests "the same event": Servoki's event_id, DataLook's whole body
    (it has no id; the relay's tests put one in the properties)."""
    try:
        body = decode_object(raw)
    except InvalidBody:
        return None
    if api_name == "servoki":
        event_id = body.get("event_id")
        return event_id if isinstance(event_id, str) else None
    return json.dumps(body, sort_keys=True)


def _misdirected(status: int) -> web.Response:
    """What a website (not the API) answers at a mistyped URL."""
    page = "<!doctype html><html><body><h1>Welcome</h1></body></html>"
    response = web.Response(status=status, text=page, content_type="text/html")
    if 300 <= status < 400:
        response.headers["Location"] = "https://www.example.com/"
    return response


async def _trickle(
    request: web.Request, response: web.Response, seconds: float
) -> web.StreamResponse:
    """Send ``response``'s head at once and its body spread over ``seconds`` (padded with
    JSON whitespace so a piece goes out every 20 ms); stop when the client hangs up."""
    body = response.body if isinstance(response.body, bytes) else b""
    body += b" " * max(0, int(seconds / 0.02) - len(body))
    stream = web.StreamResponse(status=response.status)
    stream.content_type = response.content_type
    stream.content_length = len(body)
    step = seconds / max(1, len(body))
    try:
        await stream.prepare(request)
        for index in range(len(body)):
            await asyncio.sleep(step)
            await stream.write(body[index : index + 1])
        await stream.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client gave up on the body: the case this fault is for
    return stream


async def _injected_fault(
    request: web.Request, state: SandboxState, api_name: Api, t: float, scope: str
) -> tuple[web.StreamResponse | None, bool]:
    """The faults that act before authentication: (an answer that ends the request, or None;
    whether to drop the answer after the event is processed)."""
    faults = state.faults
    if not (faults.active and api_name in faults.apis):
        return None, False
    if faults.latency_ms:
        await asyncio.sleep(faults.latency_ms / 1000)
    api = state.api(api_name)  # a reset during the sleep replaces the counters
    if faults.misdirect_status:
        api.record(t, faults.misdirect_status, scope)
        return _misdirected(faults.misdirect_status), False
    rng = state.rng
    if faults.drop_rate and rng.random() < faults.drop_rate:
        api.record(t, 0, scope)
        return _abort(request), False
    if faults.outage:
        api.record(t, 503, scope)
        return _error(503, "service unavailable (sandbox outage)"), False
    if faults.error_rate and rng.random() < faults.error_rate:
        api.record(t, faults.error_status, scope)
        return _error(faults.error_status, "injected error (sandbox fault)"), False
    return None, bool(faults.drop_after_rate) and rng.random() < faults.drop_after_rate


def _limited(state: SandboxState, api_name: Api, t: float, scope: str) -> web.Response | None:
    """A 429 when a forced-429 fault or the API's own window refuses this request."""
    api = state.api(api_name)
    faults = state.faults  # re-read: a control call may have replaced it during latency
    if faults.force_429 and api_name in faults.apis:
        faults.force_429 -= 1
        api.record(t, 429, scope, faults.retry_after)
        return _too_many(faults.retry_after)
    retry_after = api.windows.admit(scope, t)
    if retry_after is not None:
        api.record(t, 429, scope, retry_after)
        return _too_many(retry_after)
    return None


def _api_handler(api_name: Api, outcome: _Outcome) -> Callable[[web.Request], Awaitable[Any]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        t, wall = time.monotonic(), time.time()
        state = request.app[STATE]
        api = state.api(api_name)
        raw = await request.read()
        key = _event_key(api_name, raw)
        if key is not None:
            if api.in_flight[key]:
                api.overlapping += 1
            api.in_flight[key] += 1
        try:
            return await respond(request, api_name, raw, t, wall)
        finally:
            if key is not None:
                api.in_flight[key] -= 1
                if not api.in_flight[key]:
                    del api.in_flight[key]

    async def respond(
        request: web.Request, api_name: Api, raw: bytes, t: float, wall: float
    ) -> web.StreamResponse:
        state = request.app[STATE]
        scope, auth_error = _authenticate(api_name, request, state.revoked)
        ended, drop_after = await _injected_fault(request, state, api_name, t, scope)
        if ended is not None:
            return ended
        api = state.api(api_name)  # after a latency fault: a reset may have replaced it
        if auth_error is not None:
            api.record(t, 401, scope)
            return _error(401, auth_error)
        limited = _limited(state, api_name, t, scope)
        if limited is not None:
            return limited
        response = outcome(state, raw, t, wall, scope)
        if drop_after:
            # The event was processed but the answer is lost: the case idempotency exists for.
            api.record(t, 0, scope)
            return _abort(request)
        api.record(t, response.status, scope)
        faults = state.faults
        if faults.trickle_ms and api_name in faults.apis and response.body:
            return await _trickle(request, response, faults.trickle_ms / 1000)
        return response

    return handle


async def _json_payload(request: web.Request) -> dict[str, Any]:
    try:
        return decode_object(await request.read())
    except InvalidBody as exc:
        raise web.HTTPBadRequest(
            text='{"error": "control body must be a JSON object"}', content_type="application/json"
        ) from exc


def _api_param(request: web.Request) -> Api:
    name = request.query.get("api")
    for api in APIS:
        if name == api:
            return api
    raise web.HTTPBadRequest(
        text='{"error": "query parameter api must be servoki or datalook"}',
        content_type="application/json",
    )


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats_json())


async def _events(request: web.Request) -> web.Response:
    events = request.app[STATE].api(_api_param(request)).events
    return web.json_response([event.to_json() for event in events])


async def _requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].api(_api_param(request)).requests_json())


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].faults.to_json())


async def _set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.set_faults(await _json_payload(request))
    except ValueError as exc:
        return _error(400, str(exc))
    return web.json_response(state.faults.to_json())


async def _clear_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.faults = Faults()
    return web.json_response(state.faults.to_json())


def _key_from(payload: dict[str, Any]) -> str:
    key = payload.get("key")
    if not isinstance(key, str) or not key.strip():
        raise ValueError("key must be a non-empty string")
    key = key.strip()
    return key[7:].strip() if key.lower().startswith("bearer ") else key


async def _revoke(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        key = _key_from(await _json_payload(request))
    except ValueError as exc:
        return _error(400, str(exc))
    if request.path.endswith("/unrevoke"):
        state.revoked.discard(key)
    else:
        state.revoked.add(key)
    return web.json_response({"revoked": len(state.revoked)})


async def _get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].config.to_json())


async def _set_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        state.configure(await _json_payload(request))
    except ValueError as exc:
        return _error(400, str(exc))
    return web.json_response(state.config.to_json())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"reset": True})


def make_app(config: SandboxConfig | None = None) -> web.Application:
    """Build the sandbox application; its state lives at ``app[STATE]``."""
    app = web.Application()
    app[STATE] = SandboxState(config if config is not None else SandboxConfig())
    app.router.add_post("/api/events/server", _api_handler("servoki", _servoki_outcome))
    app.router.add_post("/event", _api_handler("datalook", _datalook_outcome))
    app.router.add_get("/_sandbox/stats", _stats)
    app.router.add_get("/_sandbox/events", _events)
    app.router.add_get("/_sandbox/requests", _requests)
    app.router.add_get("/_sandbox/faults", _get_faults)
    app.router.add_post("/_sandbox/faults", _set_faults)
    app.router.add_delete("/_sandbox/faults", _clear_faults)
    app.router.add_post("/_sandbox/revoke", _revoke)
    app.router.add_post("/_sandbox/unrevoke", _revoke)
    app.router.add_get("/_sandbox/config", _get_config)
    app.router.add_post("/_sandbox/config", _set_config)
    app.router.add_post("/_sandbox/reset", _reset)
    return app


async def serve(
    config: SandboxConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (forever if None); ``ready`` gets the base URL once bound."""
    runner = web.AppRunner(
        make_app(config), access_log=None, handle_signals=False, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        if ready is not None:
            ready(f"http://{shown}:{bound_port}")
        await (stop if stop is not None else asyncio.Event()).wait()
    finally:
        await runner.cleanup()
