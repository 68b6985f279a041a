"""Chaos 1: the rate-limit Redis is SIGKILLed under live load through two gateways sharing it, then
started again (empty) on the same port.

One outage covers the three failure modes at once: each mode has a route with a limit the load never
reaches (the load checks that traffic goes on as the mode says) and a "tight" route limited to 5 per
10 minutes for the whole route (the probes check the limit itself). The scenario runs once (module
fixture) and each test asserts one part of it, so a defect in one mode shows as that test only.

- ``allow``: every request passes while Redis is down.
- ``deny``: 429 ``rate_limited`` with ``Retry-After: 1`` while it is down (gateway/middleware/ratelimit.py
  answers every denial with 429; docs/ratelimit.md), 200 again once it is back.
- ``allow-local``: each gateway admits up to the limit on its own (5 each: 10 in all) while it is down.
- Recovery: ``meshgate_gateway_ratelimit_redis_up`` back to 1 on both gateways without a restart, keys in
  Redis again, and the limit shared again (5 admitted in all, whichever gateway is asked).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from chaos_lib import (
    Gateway,
    LoadGenerator,
    Outcome,
    RedisProcess,
    Target,
    assert_no_failures,
    burst,
    chaos_stack,
    failures,
    mesh_policies,
    metric,
    poll_until,
    route,
    start_echo_app,
    summary,
)

pytestmark = pytest.mark.slow

MODES = ("allow", "deny", "allow-local")
TIGHT = 5  # requests per 10 minutes on the tight routes: nothing refills during the test


def _limits() -> str:
    docs = []
    for mode in MODES:
        slug = mode.replace("-", "")
        docs.append(route(f"load-{slug}", f"/load-{slug}", "orders", rate_limit=f"roomy-{slug}"))
        docs.append(route(f"tight-{slug}", f"/tight-{slug}", "orders", rate_limit=f"tight-{slug}"))
        for name, requests, per in ((f"roomy-{slug}", 1_000_000, "1m"), (f"tight-{slug}", TIGHT, "10m")):
            docs.append(
                f"""\
apiVersion: meshgate/v1
kind: RateLimit
name: {name}
key: [{{type: route}}]
limits: [{{requests: {requests}, per: {per}}}]
failureMode: {mode}
"""
            )
    return "---\n".join(docs)


@dataclass
class RedisOutage:
    """What happened, recorded for the tests to judge."""

    gateways: list[Gateway]
    load: list[Outcome] = field(default_factory=list)
    bursts: list[Outcome] = field(default_factory=list)  # concurrent, before the kill (allow route)
    before: dict[str, list[int]] = field(default_factory=dict)  # mode -> statuses, Redis up
    down: dict[str, list[list[int]]] = field(default_factory=dict)  # mode -> per gateway, Redis down
    deny_headers: list[tuple[str | None, str | None]] = field(default_factory=list)  # (error, retry-after)
    after: dict[str, list[int]] = field(default_factory=dict)  # mode -> statuses, Redis back and steady
    after_burst: list[Outcome] = field(default_factory=list)  # concurrent, right after recovery (deny)
    errors_at_up: dict[str, float] = field(default_factory=dict)  # gateway -> redis_errors_total then
    errors_after_burst: dict[str, float] = field(default_factory=dict)
    t_kill: float = 0.0
    t_down: dict[str, float] = field(default_factory=dict)  # gateway -> first seen redis_up 0
    t_restart: float = 0.0
    t_up: dict[str, float] = field(default_factory=dict)  # gateway -> first seen redis_up 1 again
    steady: bool = False  # redis_up 1 on both gateways again before the "after" probes
    keys_after: int = 0


def _redis_up(gateway: Gateway) -> float | None:
    return metric(gateway.admin_url, "meshgate_gateway_ratelimit_redis_up")


def _redis_errors(gateway: Gateway) -> float:
    return metric(gateway.admin_url, "meshgate_gateway_ratelimit_redis_errors_total") or 0.0


def _get(client: httpx.Client, gateway: Gateway, path: str) -> httpx.Response:
    return client.get(f"{gateway.url}{path}")


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisOutage]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH")
    tmp = tmp_path_factory.mktemp("chaos-redis")
    files = mesh_policies() | {"limits.yaml": _limits()}
    with chaos_stack(tmp, files) as (stack, _policies):
        redis = RedisProcess(stack.procs)
        redis.start()
        stack.start_sidecar("orders", start_echo_app(stack.procs, "orders"))
        gateways = [
            stack.start_gateway("--redis", redis.url, knows=["orders"], name=f"gateway-{i}") for i in range(2)
        ]
        result = RedisOutage(gateways)
        targets = [
            Target(f"{gw.name}/{mode}", f"{gw.url}/load-{mode.replace('-', '')}/x")
            for gw in gateways
            for mode in MODES
        ]
        with httpx.Client(timeout=20, trust_env=False) as probe, LoadGenerator(targets, pause=0.03) as load:
            load.wait_progress(10)
            # concurrent requests: several Redis pipelines in flight, so several pooled connections
            for gw in gateways:
                result.bursts += burst(Target(f"{gw.name}/allow", f"{gw.url}/load-allow/x"))
            # Redis up: three of the five on each tight route, spread over both gateways
            for mode in MODES:
                slug = mode.replace("-", "")
                result.before[mode] = [
                    _get(probe, gateways[i % 2], f"/tight-{slug}/x").status_code for i in range(3)
                ]
            assert all(_redis_up(gw) == 1 for gw in gateways)

            result.t_kill = time.monotonic()
            redis.kill()
            for gw in gateways:
                if poll_until(lambda gw=gw: _redis_up(gw) == 0, 15):
                    result.t_down[gw.name] = time.monotonic()
            load.wait_progress(10)
            for mode in MODES:
                slug = mode.replace("-", "")
                per_gateway = []
                for gw in gateways:
                    answers = [_get(probe, gw, f"/tight-{slug}/x") for _ in range(TIGHT + 2)]
                    per_gateway.append([a.status_code for a in answers])
                    if mode == "deny":
                        result.deny_headers += [
                            (a.headers.get("x-meshgate-error"), a.headers.get("retry-after")) for a in answers
                        ]
                result.down[mode] = per_gateway

            result.t_restart = time.monotonic()
            redis.start()  # same port, empty: the keys of before the outage are gone
            for gw in gateways:
                if poll_until(lambda gw=gw: _redis_up(gw) == 1, 15):
                    result.t_up[gw.name] = time.monotonic()
                    result.errors_at_up[gw.name] = _redis_errors(gw)
            for gw in gateways:  # right after recovery, concurrent decisions (failureMode deny)
                result.after_burst += burst(Target(f"{gw.name}/deny", f"{gw.url}/load-deny/x"))
                result.errors_after_burst[gw.name] = _redis_errors(gw)
            load.wait_progress(10)
            # steady again (a second round of concurrent decisions, in case a stale connection is left)
            for gw in gateways:
                poll_until(lambda gw=gw: _redis_up(gw) == 1, 15)
                burst(Target(f"{gw.name}/allow", f"{gw.url}/load-allow/x"))
            result.steady = all(poll_until(lambda gw=gw: _redis_up(gw) == 1, 15) for gw in gateways)
            for mode in MODES:
                slug = mode.replace("-", "")
                result.after[mode] = [
                    _get(probe, gateways[i % 2], f"/tight-{slug}/x").status_code for i in range(TIGHT + 3)
                ]
            result.keys_after = redis.dbsize()
            load.wait_progress(5)
        result.load = load.outcomes
        yield result


def _load(outage: RedisOutage, mode: str) -> list[Outcome]:
    return [o for o in outage.load if o.target.endswith(f"/{mode}")]


def _gateway(o: Outcome) -> str:
    return o.target.split("/")[0]


def _while_down(outage: RedisOutage, outcomes: list[Outcome]) -> list[Outcome]:
    """Requests started once their gateway had seen Redis down and ended before it was restarted."""
    return [
        o
        for o in outcomes
        if _gateway(o) in outage.t_down
        and o.started >= outage.t_down[_gateway(o)]
        and o.ended < outage.t_restart
    ]


def test_allow_mode_lets_everything_through_while_redis_is_down(outage: RedisOutage) -> None:
    assert_no_failures(outage.bursts, minimum=40)
    assert outage.before["allow"] == [200] * 3
    assert set(outage.t_down) == {gw.name for gw in outage.gateways}, "a gateway never saw Redis down"
    assert outage.down["allow"] == [[200] * (TIGHT + 2)] * 2  # no limit at all while it is down
    load = _load(outage, "allow")
    assert _while_down(outage, load), "no load ran while Redis was down"
    assert_no_failures(load, minimum=20)


def test_deny_mode_answers_429_while_redis_is_down(outage: RedisOutage) -> None:
    assert outage.before["deny"] == [200] * 3
    assert outage.down["deny"] == [[429] * (TIGHT + 2)] * 2
    assert set(outage.deny_headers) == {("rate_limited", "1")}
    load = _load(outage, "deny")
    assert not failures(load, ok=(200, 429)), summary(failures(load, ok=(200, 429)))
    assert {o.error for o in load if o.status == 429} <= {"rate_limited"}
    early = [o for o in load if o.ended < outage.t_kill]  # decided before the kill: Redis said yes
    assert early and not failures(early), summary(early)
    down = _while_down(outage, load)  # while it was down (and seen so), every request was refused
    assert down and {o.status for o in down} == {429}, summary(down)


def test_allow_local_mode_limits_each_gateway_on_its_own_while_redis_is_down(outage: RedisOutage) -> None:
    assert outage.before["allow-local"] == [200] * 3
    expected = [200] * TIGHT + [429] * 2  # a fresh in-process bucket per gateway, same limit
    assert outage.down["allow-local"] == [expected, expected]
    load = _load(outage, "allow-local")
    assert _while_down(outage, load), "no load ran while Redis was down"
    assert_no_failures(load, minimum=20)


def test_after_restart_the_gateways_use_redis_again_and_share_the_limit(outage: RedisOutage) -> None:
    assert set(outage.t_up) == {gw.name for gw in outage.gateways}, (
        "meshgate_gateway_ratelimit_redis_up did not come back to 1 on every gateway"
    )
    assert outage.steady
    assert outage.keys_after >= 1  # the limiter's keys are in (the new, empty) Redis again
    for mode in MODES:
        # Redis came back empty: a fresh quota of 5 for the route, shared by both gateways
        assert outage.after[mode] == [200] * TIGHT + [429] * 3, mode


def test_once_redis_is_back_every_decision_is_made_in_redis(outage: RedisOutage) -> None:
    assert set(outage.t_up) == {gw.name for gw in outage.gateways}
    # concurrent decisions right after recovery (several pooled connections in use): all in Redis,
    # none falls back to failureMode deny
    assert not failures(outage.after_burst), summary(failures(outage.after_burst))
    assert outage.errors_after_burst == outage.errors_at_up, "Redis errors after it was back"
    late = [o for o in _load(outage, "deny") if o.started > outage.t_up[_gateway(o)]]
    assert late and not failures(late), summary(failures(late))
