"""``RateLimiter``: one decision per request, made atomically in Redis, with a local fallback.

A decision for ``(doc, key, cost)`` goes, in order, to:

1. the local cache of keys known to be over their limit (``source="local-cache"``): a key Redis
   denied is answered from memory, without a round trip, until the Retry-After it was given (but not
   past the moment its limits are fully available again, see :func:`_hold_us`);
2. Redis, when it is healthy (``source="redis"``): one ``EVALSHA`` of :data:`script.SCRIPT` covering
   every limit of the document. Calls made in the same event-loop tick share one pipeline;
3. the document's ``failureMode`` when there is no Redis, or it failed or timed out
   (``fallback-allow``, ``fallback-deny``, ``fallback-local``). The first failure logs one warning and
   starts a background probe (every ``probe_interval`` seconds, default 1 s); while Redis is down,
   requests do not touch it at all, so a dead Redis costs no timeout per request. When the probe
   succeeds, decisions go back to Redis (and one more warning says so).

Redis keys: ``<prefix>{<blake2b-128 of doc.name NUL key>}:<g|s><index>``, one per limit. Every key of
one decision shares the hash tag (one Redis Cluster slot); the raw key never appears in Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from gateway.ratelimit.batcher import Batcher
from gateway.ratelimit.local import CachedDenial, DeniedCache, LocalBuckets
from gateway.ratelimit.script import SCRIPT, SCRIPT_SHA
from gateway.ratelimit.wire import Connections, pack
from shared.config.durations import format_duration
from shared.config.model.edge import RateLimit

log = logging.getLogger("meshgate.gateway.ratelimit")

STAT_NAMES = (
    "decisions",  # every check()
    "denied",  # every check() that answered allowed=False
    "redis_errors",  # failed round trips (connection, timeout) and per-decision script errors
    "fallback",  # decisions made by the failure mode (no Redis, or Redis down)
    "local_cache_hits",  # denials answered from the cache of keys over their limit
    "noscript_reloads",  # SCRIPT LOAD after Redis answered NOSCRIPT
    "round_trips",  # pipelines (and SCRIPT LOADs) sent to Redis
)

Metrics = Callable[[str, int], None]
"""Called as ``metrics(counter_name, increment)`` whenever a :attr:`RateLimiter.stats` counter moves."""

_Call = tuple[tuple[bytes, ...], tuple[bytes, ...]]  # KEYS, ARGV (bytes: redis-py sends them as they are)
_Outcome = bytes | BaseException

_MICRO = 1_000_000
_SHA = SCRIPT_SHA.encode()
_SCRIPT_LOAD = pack(b"SCRIPT", b"LOAD", SCRIPT.encode())
_ONE_US = timedelta(microseconds=1)


def _ceil_div(value: int, unit: int) -> int:
    return -(-value // unit)


def _ceil_s(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-9))


def _sf_string(value: str) -> str:
    """An RFC 9651 sf-string: printable ASCII, with ``\\`` and ``"`` escaped."""
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("?")
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class LimitState:
    """One limit's outcome."""

    name: str  # "<RateLimit name>-<per>", e.g. "per-key-1s" ("<name>-<index>" if two limits share a per)
    quota: int  # requests allowed per window (Limit.requests)
    window_s: int  # window in whole seconds (ceil of Limit.per)
    remaining: int  # requests left now (>= 0)
    reset_s: int  # seconds until the quota is fully available again (>= 0)


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    states: tuple[LimitState, ...]  # one per Limit in the document, same order
    retry_after_s: int  # 0 when allowed; else seconds (ceil, >= 1) until the request would be allowed
    source: str  # "redis" | "local-cache" | "fallback-allow" | "fallback-deny" | "fallback-local"

    def headers(self) -> list[tuple[str, str]]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers-11), plus
        ``Retry-After`` when the request is not allowed.

        Names are lower-case (the gateway's header convention; HTTP/2 requires it), values as in
        STANDARDS: ``"name";q=100;w=60`` and ``"name";r=42;t=17``, one list member per limit.
        ``RateLimit`` is left out for ``fallback-allow``: with Redis down the remaining quota is not
        known, and a made-up one would mislead clients.
        """
        out = [
            (
                "ratelimit-policy",
                ", ".join(f"{_sf_string(s.name)};q={s.quota};w={s.window_s}" for s in self.states),
            )
        ]
        if self.source != "fallback-allow":
            out.append(
                (
                    "ratelimit",
                    ", ".join(f"{_sf_string(s.name)};r={s.remaining};t={s.reset_s}" for s in self.states),
                )
            )
        if not self.allowed:
            out.append(("retry-after", str(max(1, self.retry_after_s))))
        return out


@dataclass(frozen=True)
class _Plan:
    """What a ``RateLimit`` document turns into, computed once per document object."""

    name: str
    algorithm: str
    failure_mode: str
    names: tuple[str, ...]
    quotas: tuple[int, ...]
    windows: tuple[int, ...]
    periods_s: tuple[float, ...]
    bursts: tuple[int, ...]
    capacity: int  # the largest cost any request can ever have admitted
    argv: tuple[bytes, ...]  # algorithm, then per limit: period_us, requests, burst
    suffixes: tuple[str, ...]
    #: names this document's in-process state: its name and its limits, so a RateLimit changed under
    #: the same name starts with a fresh local cache and fresh allow-local buckets
    local_name: str


def _plan(doc: RateLimit) -> _Plan:
    pers = [format_duration(limit.per) for limit in doc.limits]
    unique = len(set(pers)) == len(pers)
    names = tuple(f"{doc.name}-{per if unique else i}" for i, per in enumerate(pers))
    periods_us = [limit.per // _ONE_US for limit in doc.limits]
    bursts = tuple(limit.burst or limit.requests for limit in doc.limits)
    gcra = doc.algorithm == "gcra"
    capacities = bursts if gcra else tuple(limit.requests for limit in doc.limits)
    argv: list[str] = [doc.algorithm]
    for period, limit, burst in zip(periods_us, doc.limits, bursts, strict=True):
        argv += [str(period), str(limit.requests), str(burst)]
    letter = "g" if gcra else "s"
    return _Plan(
        name=doc.name,
        algorithm=doc.algorithm,
        failure_mode=doc.failure_mode,
        names=names,
        quotas=tuple(limit.requests for limit in doc.limits),
        windows=tuple(max(1, _ceil_div(p, _MICRO)) for p in periods_us),
        periods_s=tuple(p / _MICRO for p in periods_us),
        bursts=bursts,
        capacity=min(capacities),
        argv=tuple(arg.encode() for arg in argv),
        suffixes=tuple(f"{letter}{i}" for i in range(len(doc.limits))),
        local_name="\0".join([doc.name, *argv]),
    )


def _states(plan: _Plan, remaining: Sequence[int], reset_s: Sequence[int]) -> tuple[LimitState, ...]:
    return tuple(
        LimitState(name, quota, window, max(0, left), max(0, reset))
        for name, quota, window, left, reset in zip(
            plan.names, plan.quotas, plan.windows, remaining, reset_s, strict=True
        )
    )


def _hold_us(
    retry_us: int, retry_after_s: int, states: Sequence[LimitState], resets_us: Sequence[int], cost: int
) -> int:
    """How long the local cache answers for a key Redis just denied.

    Until the ``Retry-After`` the client was given (whole seconds), so the gateway's answers agree with
    what it said and a key that ignores Retry-After costs one round trip per second, not one per
    emission interval; but never past the moment the limits that denied are fully available again:
    tokens that accrue while the cache holds are not lost (the burst absorbs them), so the limit's
    rate is kept even for sub-second windows (``1000 per 100ms``). Never shorter than the exact retry.
    """
    denying = [reset for state, reset in zip(states, resets_us, strict=True) if state.remaining < cost]
    hold = min(retry_after_s * _MICRO, max(denying)) if denying else retry_us
    return max(retry_us, hold)


def key_digest(doc_name: str, key: str) -> str:
    """The hash that stands for ``key`` in Redis (any string: newlines, unicode, lone surrogates)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(doc_name.encode())
    digest.update(b"\0")
    digest.update(key.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def redis_keys(prefix: str, digest: str, suffixes: Sequence[str]) -> tuple[bytes, ...]:
    """``<prefix>{<digest>}:<suffix>``: one hash tag for all the keys of one decision."""
    return tuple(f"{prefix}{{{digest}}}:{suffix}".encode() for suffix in suffixes)


def _failed(exc: BaseException) -> _Outcome:
    return exc


def _outcome(reply: object) -> _Outcome:
    if isinstance(reply, bytes | BaseException):
        return reply
    return ResponseError(f"unexpected reply {reply!r:.100}")


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RateLimiter:
    """Rate-limit decisions shared by every gateway process that uses the same Redis."""

    def __init__(
        self,
        redis_url: str | None,
        *,
        key_prefix: str = "mg:rl:",
        local_cache_max: int = 100_000,
        timeout: float = 0.25,
        metrics: Metrics | None = None,
        probe_interval: float = 1.0,
        max_batch: int = 256,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain '{' or '}' (they would change the hash tag)")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.key_prefix = key_prefix
        self.timeout = timeout
        self.probe_interval = probe_interval
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._metrics = metrics
        self._client: aioredis.Redis | None = None
        self._wire: Connections | None = None
        if redis_url is not None:
            # no socket_timeout: every round trip runs under asyncio.timeout(timeout) in _send, and
            # redis-py's own would add a task per write (wire.py)
            self._client = aioredis.Redis.from_url(
                redis_url,
                socket_timeout=None,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._wire = Connections(self._client.connection_pool)
        self._ok = self._client is not None
        self._closed = False
        self._down_since = 0.0
        self._probe_task: asyncio.Task[None] | None = None
        self._batcher: Batcher[_Call, _Outcome] = Batcher(self._flush, _failed, max_batch=max_batch)
        self._plans: dict[int, tuple[RateLimit, _Plan]] = {}
        self._denied = DeniedCache(local_cache_max)
        self._buckets = LocalBuckets(local_cache_max)
        self._script_error_logged_at = -math.inf
        self._probe_call: _Call = (
            (f"{key_prefix}{{probe}}:g0".encode(),),
            (b"gcra", b"0", str(_MICRO).encode(), b"1", b"1"),
        )
        if redis_url is None:
            log.warning(
                "rate limits: no Redis configured; every decision follows its RateLimit's failureMode "
                "(allow-local limits each gateway process on its own)"
            )

    # ----- public -----------------------------------------------------------------------------------

    @property
    def redis_ok(self) -> bool:
        """Last known Redis health (False without Redis, while it is down, and after close)."""
        return self._client is not None and self._ok

    async def check(self, doc: RateLimit, key: str, cost: int = 1) -> RateDecision:
        """Decide one request of ``cost`` units for ``key`` (an opaque string, hashed) under ``doc``.

        Never raises for Redis trouble (the failure mode answers); raises ValueError for cost < 0.
        """
        if cost < 0:
            raise ValueError(f"cost must be >= 0, not {cost}")
        plan = self._plan(doc)
        digest = key_digest(doc.name, key)
        slot = (plan.local_name, digest)
        self._bump("decisions")
        now = time.monotonic()
        cached = self._denied.get(slot, cost, now)
        if cached is not None:
            self._bump("local_cache_hits")
            return self._denial(self._from_cache(plan, cached, now))
        if self._client is None or not self._ok:
            return self._fallback(plan, slot, cost)
        call: _Call = (
            redis_keys(self.key_prefix, digest, plan.suffixes),
            (plan.argv[0], str(cost).encode(), *plan.argv[1:]),
        )
        try:
            outcome = await self._batcher.submit(call)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # defensive: nothing from Redis escapes check()
            outcome = exc
        reply = self._reply(plan, outcome)
        if reply is None:
            return self._fallback(plan, slot, cost)
        return self._from_redis(plan, slot, cost, reply)

    async def close(self) -> None:
        """Stop probing, fail queued calls, close the Redis client. Later checks use the failure mode."""
        self._closed = True
        self._ok = False
        if self._probe_task is not None:
            self._probe_task.cancel()
            await asyncio.gather(self._probe_task, return_exceptions=True)
            self._probe_task = None
        await self._batcher.close()
        if self._wire is not None:
            await self._wire.close()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ----- decisions --------------------------------------------------------------------------------

    def _plan(self, doc: RateLimit) -> _Plan:
        found = self._plans.get(id(doc))
        if found is not None and found[0] is doc:
            return found[1]
        if len(self._plans) >= 4096:
            self._plans.clear()
        plan = _plan(doc)
        self._plans[id(doc)] = (doc, plan)
        return plan

    def _reply(self, plan: _Plan, outcome: _Outcome) -> list[int] | None:
        """The script's reply, or None after recording why there is none."""
        if isinstance(outcome, BaseException):
            # ResponseError: Redis answered (the script failed for this decision); anything else
            # (connection refused or lost, timeout) means Redis is unavailable.
            if not isinstance(outcome, ResponseError | asyncio.CancelledError):
                self._mark_down(outcome)
            return None
        try:
            reply = [int(v) for v in outcome.split()] if isinstance(outcome, bytes) else []
        except ValueError:
            reply = []
        if len(reply) == 2 + 2 * len(plan.names):
            return reply
        self._bump("redis_errors")
        self._script_error(f"unexpected script reply {outcome!r:.200}")
        return None

    def _from_redis(self, plan: _Plan, slot: tuple[str, str], cost: int, reply: list[int]) -> RateDecision:
        count = len(plan.names)
        states = _states(
            plan,
            [reply[2 + 2 * i] for i in range(count)],
            [_ceil_div(reply[3 + 2 * i], _MICRO) for i in range(count)],
        )
        if reply[0] == 1:
            return RateDecision(True, states, 0, "redis")
        retry_us = max(1, reply[1])
        retry_after_s = max(1, _ceil_div(retry_us, _MICRO))
        if cost <= plan.capacity:  # a cost no limit can ever admit says nothing about the key
            now = time.monotonic()
            resets_us = [reply[3 + 2 * i] for i in range(len(states))]
            self._denied.put(
                slot,
                CachedDenial(
                    until=now + _hold_us(retry_us, retry_after_s, states, resets_us, cost) / _MICRO,
                    cost=cost,
                    stored_at=now,
                    remaining=tuple(s.remaining for s in states),
                    reset_s=tuple(reset / _MICRO for reset in resets_us),
                ),
            )
        return self._denial(RateDecision(False, states, retry_after_s, "redis"))

    def _from_cache(self, plan: _Plan, entry: CachedDenial, now: float) -> RateDecision:
        elapsed = now - entry.stored_at
        states = _states(plan, entry.remaining, [_ceil_s(reset - elapsed) for reset in entry.reset_s])
        return RateDecision(False, states, max(1, _ceil_s(entry.until - now)), "local-cache")

    def _fallback(self, plan: _Plan, slot: tuple[str, str], cost: int) -> RateDecision:
        self._bump("fallback")
        mode = plan.failure_mode
        if mode == "allow":
            states = _states(plan, plan.quotas, [0] * len(plan.quotas))
            return RateDecision(True, states, 0, "fallback-allow")
        if mode == "deny":
            states = _states(plan, [0] * len(plan.quotas), [1] * len(plan.quotas))
            return self._denial(RateDecision(False, states, 1, "fallback-deny"))
        outcome = self._buckets.decide(slot, plan.periods_s, plan.quotas, plan.bursts, cost, time.monotonic())
        states = _states(plan, outcome.remaining, [_ceil_s(reset) for reset in outcome.reset_s])
        if outcome.allowed:
            return RateDecision(True, states, 0, "fallback-local")
        return self._denial(RateDecision(False, states, max(1, _ceil_s(outcome.retry_s)), "fallback-local"))

    def _denial(self, decision: RateDecision) -> RateDecision:
        self._bump("denied")
        return decision

    # ----- Redis ------------------------------------------------------------------------------------

    async def _flush(self, calls: Sequence[_Call]) -> list[_Outcome]:
        try:
            return await self._send(calls)
        except Exception:
            self._bump("redis_errors")
            raise

    async def _send(self, calls: Sequence[_Call]) -> list[_Outcome]:
        """One pipeline of EVALSHA; on NOSCRIPT, SCRIPT LOAD and resend those calls. All within timeout."""
        if self._client is None:
            raise ConnectionError("rate limiter closed")
        async with asyncio.timeout(self.timeout):
            results = await self._pipeline(calls)
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:
                self._bump("noscript_reloads")
                self._bump("round_trips")
                loaded = (await self._wire_execute([_SCRIPT_LOAD]))[0]
                if isinstance(loaded, BaseException):
                    raise loaded
                again = await self._pipeline([calls[i] for i in missing])
                for i, result in zip(missing, again, strict=True):
                    results[i] = result
        for result in results:
            if isinstance(result, BaseException):
                self._bump("redis_errors")
                self._script_error(_describe(result, self.timeout))
        return results

    async def _pipeline(self, calls: Sequence[_Call]) -> list[_Outcome]:
        self._bump("round_trips")
        replies = await self._wire_execute(
            [pack(b"EVALSHA", _SHA, b"%d" % len(keys), *keys, *argv) for keys, argv in calls]
        )
        return [_outcome(reply) for reply in replies]

    async def _wire_execute(self, commands: Sequence[bytes]) -> list[object]:
        if self._wire is None:
            raise ConnectionError("rate limiter closed")
        return await self._wire.execute(commands)

    def _script_error(self, what: str) -> None:
        now = time.monotonic()
        if now - self._script_error_logged_at >= 60.0:
            self._script_error_logged_at = now
            log.warning("rate-limit script failed (%s); that decision used the failureMode", what)

    def _mark_down(self, exc: BaseException) -> None:
        if self._client is None or self._closed:
            return
        if self._ok:
            self._ok = False
            self._down_since = time.monotonic()
            log.warning(
                "rate-limit Redis unavailable (%s): decisions follow each RateLimit's failureMode "
                "until it answers again (probing every %gs)",
                _describe(exc, self.timeout),
                self.probe_interval,
            )
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.probe_interval)
            try:
                outcome = (await self._send([self._probe_call]))[0]
            except Exception:
                continue
            if isinstance(outcome, BaseException) or self._closed:
                continue
            # connections opened before the outage still point at the dead server: drop them all, or
            # the next decisions fail on them and mark Redis down again
            if self._wire is not None:
                await self._wire.clear()
            self._ok = True
            self._buckets.clear()
            log.warning(
                "rate-limit Redis answers again after %.1fs: decisions are made in Redis",
                time.monotonic() - self._down_since,
            )
            return

    def _bump(self, name: str) -> None:
        self.stats[name] += 1
        if self._metrics is not None:
            try:
                self._metrics(name, 1)
            except Exception:  # metrics must never break a decision
                log.debug("rate-limit metrics callback failed", exc_info=True)
