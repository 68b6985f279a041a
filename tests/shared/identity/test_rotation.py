"""CertificateManager: renewal at half-life with jitter, backoff while the CA is away, context swaps and
bundle updates, all on a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from identity_testlib import TD

from shared.identity.ca import CertificateAuthority
from shared.identity.rotation import CertificateManager, RenewalError
from shared.identity.spiffeid import SpiffeId, workload_id

WEB = workload_id(TD, "web")
DAY = 86400.0


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self.sleeps: list[float] = []

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class Signer:
    """Signs through the real CA at the fake time; ``down`` makes it fail like an unreachable CA."""

    def __init__(self, ca: CertificateAuthority, time: FakeTime, identity: SpiffeId = WEB) -> None:
        self.ca, self.time, self.identity = ca, time, identity
        self.calls = 0
        self.down = False

    async def __call__(self, csr: bytes) -> Sequence[x509.Certificate]:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("control plane unreachable")
        return self.ca.sign_csr(csr, self.identity, now=self.time.now)


def manager(ca: CertificateAuthority, time: FakeTime, signer: Signer, **kw: Any) -> CertificateManager:
    return CertificateManager(
        WEB, signer, ca.bundle(), clock=time.clock, sleep=time.sleep, rng=random.Random(7), **kw
    )


async def until(predicate: Any, steps: int = 2000) -> None:
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def test_renews_at_half_life_with_jitter(ca: CertificateAuthority) -> None:
    time = FakeTime()
    signer = Signer(ca, time)
    mgr = manager(ca, time, signer)

    async def go() -> list[float]:
        await mgr.start()
        assert mgr.renewals == 1 and 0 < DAY - mgr.seconds_to_expiry() < 31
        await until(lambda: mgr.renewals >= 6)
        await mgr.stop()
        return time.sleeps

    sleeps = asyncio.run(go())
    assert len(sleeps) >= 5
    for waited in sleeps[:5]:
        # leaves are backdated 30 s, so the wait is the jittered half-life minus up to 30 s
        assert 0.45 * DAY - 31 <= waited <= 0.55 * DAY, waited
    assert len({round(w) for w in sleeps[:5]}) > 1  # jitter: not all the same
    assert mgr.failures == 0 and signer.calls == mgr.renewals


def test_backoff_while_ca_is_away_then_recovers(ca: CertificateAuthority) -> None:
    time = FakeTime()
    signer = Signer(ca, time)
    mgr = manager(ca, time, signer, backoff_initial=1.0, backoff_max=60.0)

    async def go() -> tuple[list[float], Any, Any, float, float]:
        await mgr.start()
        first_ctx = mgr.server_context()
        signer.down = True
        await until(lambda: mgr.failures >= 10)
        during_ctx = mgr.server_context()
        left = mgr.seconds_to_expiry()
        signer.down = False
        recovered_at = time.now
        await until(lambda: mgr.renewals == 2)
        after = (mgr.chain[0].not_valid_after_utc - recovered_at).total_seconds()
        await mgr.stop()
        return time.sleeps, first_ctx, during_ctx, left, after

    sleeps, first_ctx, during_ctx, left, after = asyncio.run(go())
    backoffs = sleeps[1:11]  # sleeps[0] is the wait until half-life
    for attempt, waited in enumerate(backoffs):
        ceiling = min(60.0, 2.0**attempt)
        assert ceiling / 2 <= waited <= ceiling, (attempt, waited)
    assert during_ctx is first_ctx  # still serving the current certificate while the CA is away
    assert 0.45 * DAY - 600 < left < 0.55 * DAY + 60  # jittered half-life, minus the backoff waits
    assert DAY - 31 < after <= DAY + 60  # fresh certificate after recovery
    assert mgr.last_error is None


def test_keeps_current_certificate_past_expiry_when_ca_never_returns(ca: CertificateAuthority) -> None:
    time = FakeTime()
    signer = Signer(ca, time)
    mgr = manager(ca, time, signer, backoff_max=3600.0)

    async def go() -> tuple[float, Any, Any]:
        await mgr.start()
        ctx = mgr.server_context()
        signer.down = True
        await until(lambda: mgr.seconds_to_expiry() < 0)
        await mgr.stop()
        return mgr.seconds_to_expiry(), ctx, mgr.server_context()

    left, before, after = asyncio.run(go())
    assert left < 0 and before is after
    assert mgr.last_error is not None and "control plane unreachable" in mgr.last_error
    assert max(time.sleeps[1:]) <= 3600.0


def test_first_certificate_is_retried_until_the_ca_answers(ca: CertificateAuthority) -> None:
    time = FakeTime()
    signer = Signer(ca, time)
    signer.down = True
    mgr = manager(ca, time, signer)
    assert mgr.seconds_to_expiry() == 0.0
    with pytest.raises(RenewalError, match="no certificate yet"):
        mgr.server_context()

    async def go() -> None:
        task = asyncio.create_task(mgr.start())
        await until(lambda: mgr.failures >= 3)
        signer.down = False
        await asyncio.wait_for(task, 5)
        await mgr.stop()

    asyncio.run(go())
    assert mgr.renewals == 1 and mgr.client_context() is not None


def test_bundle_updates_rebuild_contexts(ca: CertificateAuthority) -> None:
    time = FakeTime()
    mgr = manager(ca, time, Signer(ca, time))
    asyncio.run(mgr.renew())
    server, client = mgr.server_context(), mgr.client_context()
    assert mgr.update_bundle(ca.bundle()) is False and mgr.server_context() is server  # unchanged
    rotated = ca.rotate()
    assert mgr.update_bundle(rotated) is True
    assert mgr.server_context() is not server and mgr.client_context() is not client
    assert mgr.bundle == rotated
    stale = ca.bundle().with_roots(ca.roots()[:1])
    assert mgr.update_bundle(type(stale)(TD, stale.roots, rotated.sequence - 1)) is False  # older sequence
    with pytest.raises(ValueError, match=r"expected 'example\.org'"):
        mgr.update_bundle(type(stale)("other.org", stale.roots, 99))


def test_new_leaf_from_an_untrusted_root_is_not_installed(ca: CertificateAuthority) -> None:
    """The CA rotated but this workload has not received the new bundle: installing a leaf under the new
    root would make peers refuse it, so the manager keeps the current one and retries."""
    time = FakeTime()
    mgr = manager(ca, time, Signer(ca, time))
    asyncio.run(mgr.renew())
    current = mgr.chain
    ca.rotate()
    with pytest.raises(RenewalError, match="not usable yet"):
        asyncio.run(mgr.renew())
    assert mgr.chain == current
    mgr.update_bundle(ca.bundle())
    asyncio.run(mgr.renew())
    assert mgr.chain != current


def test_signer_answers_are_checked(ca: CertificateAuthority) -> None:
    time = FakeTime()

    async def wrong_identity(csr: bytes) -> Sequence[x509.Certificate]:
        return ca.issue(workload_id(TD, "admin"))[0]

    wrong = CertificateManager(WEB, wrong_identity, ca.bundle(), clock=time.clock)
    with pytest.raises(RenewalError, match=r"expected spiffe://example\.org/ns/default/sa/web"):
        asyncio.run(wrong.renew())

    async def other_key(csr: bytes) -> Sequence[x509.Certificate]:
        return ca.issue(WEB)[0]

    with pytest.raises(RenewalError, match="another key"):
        asyncio.run(CertificateManager(WEB, other_key, ca.bundle()).renew())

    async def empty(csr: bytes) -> Sequence[x509.Certificate]:
        return []

    with pytest.raises(RenewalError, match="empty chain"):
        asyncio.run(CertificateManager(WEB, empty, ca.bundle()).renew())


def test_renew_soon_wakes_the_loop(ca: CertificateAuthority) -> None:
    async def go() -> int:
        mgr = CertificateManager(WEB, Signer(ca, FakeTime()), ca.bundle())  # real clock and sleep
        await mgr.start()
        mgr.renew_soon()
        await asyncio.wait_for(until_async(lambda: mgr.renewals >= 2), 5)
        await mgr.stop()
        return mgr.renewals

    assert asyncio.run(go()) >= 2


async def until_async(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def test_bad_parameters_are_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="renew_at"):
        CertificateManager(WEB, Signer(ca, FakeTime()), ca.bundle(), renew_at=1.5)


def test_short_ttl_renews_at_half_the_remaining_life_not_at_once(ca: CertificateAuthority) -> None:
    """Leaves are backdated 30 s: with certificateTTL 30s a plan from notBefore fell due at once, and
    the sidecar renewed in a loop (25 signing requests in 6 s). Planned from now, it waits ~15 s."""
    time = FakeTime()

    class ShortSigner(Signer):
        async def __call__(self, csr: bytes) -> Sequence[x509.Certificate]:
            self.calls += 1
            return self.ca.sign_csr(csr, self.identity, timedelta(seconds=30), now=self.time.now)

    signer = ShortSigner(ca, time)
    mgr = manager(ca, time, signer)

    async def go() -> list[float]:
        await mgr.start()
        await until(lambda: mgr.renewals >= 4)
        await mgr.stop()
        return time.sleeps

    sleeps = asyncio.run(go())
    for waited in sleeps[:3]:
        assert 0.45 * 30 - 0.01 <= waited <= 0.55 * 30 + 0.01, waited
