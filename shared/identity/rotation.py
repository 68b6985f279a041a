"""Workload certificate rotation: keep a fresh SVID and TLS contexts for new connections.

:class:`CertificateManager` holds the workload's current SVID, key, trust bundle and the server and client
contexts built from them. It renews at half-life (with jitter, so a fleet does not stampede the CA)
through an injected async ``sign(csr_pem) -> chain`` callable: the key is made here and never leaves.
New contexts serve NEW connections only; live connections keep the SSL objects they were built with.
While the CA is away it retries with exponential backoff plus jitter and keeps serving the current
certificate until it expires. A renewed leaf that does not chain to the current bundle (the CA already
signs with a rotated root whose bundle has not arrived yet) is not installed: installing it would break
every peer that does not trust the new root yet; the manager retries instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .bundle import TrustBundle
from .certutil import SigningKey
from .csr import make_csr
from .spiffeid import SpiffeId
from .svid import SvidError, check_leaf, verify_chain
from .tls import MeshClientContext, client_context, server_context

__all__ = ["CertificateManager", "RenewalError", "SignFn"]

log = logging.getLogger("meshgate.identity.rotation")

SignFn = Callable[[bytes], Awaitable[Sequence[x509.Certificate]]]
Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


class RenewalError(Exception):
    """A renewal attempt failed; the message says why (the current certificate stays in use)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _new_key() -> SigningKey:
    return ec.generate_private_key(ec.SECP256R1())


class CertificateManager:
    """Keeps one workload's SVID fresh and hands out TLS contexts for new connections.

    ``renew_at`` is the fraction of the lifetime at which to renew and ``jitter`` the width of the window
    around it (0.5 and 0.1: somewhere between 45 % and 55 % of the lifetime). Backoff after a failed
    attempt starts at ``backoff_initial`` seconds, doubles up to ``backoff_max``, and each wait is drawn
    uniformly from its upper half. ``clock``, ``sleep`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        spiffe_id: SpiffeId,
        sign: SignFn,
        bundle: TrustBundle,
        *,
        chain: Sequence[x509.Certificate] | None = None,
        key: SigningKey | None = None,
        clock: Clock = _utcnow,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        renew_at: float = 0.5,
        jitter: float = 0.1,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        key_factory: Callable[[], SigningKey] = _new_key,
        on_renewed: Callable[[list[x509.Certificate], SigningKey], None] | None = None,
    ) -> None:
        self._on_renewed = on_renewed
        if not 0 < renew_at < 1 or not 0 <= jitter < 2 * min(renew_at, 1 - renew_at):
            raise ValueError("renew_at must be in (0, 1) and the jitter window must stay inside the lifetime")
        self.spiffe_id = spiffe_id
        self._sign = sign
        self._bundle = bundle
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._renew_at = renew_at
        self._jitter = jitter
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._key_factory = key_factory
        self._chain: list[x509.Certificate] = []
        self._key: SigningKey | None = None
        self._server: ssl.SSLContext | None = None
        self._client: MeshClientContext | None = None
        self._due: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None
        if chain is not None and key is not None:
            self._install(list(chain), key)

    # ----- what the data path uses ----------------------------------------------------------------------

    @property
    def chain(self) -> list[x509.Certificate]:
        """The current certificate chain (leaf first); empty before the first certificate."""
        return list(self._chain)

    @property
    def key(self) -> SigningKey | None:
        """The private key of the current certificate (None before the first one)."""
        return self._key

    @property
    def bundle(self) -> TrustBundle:
        """The trust bundle the contexts verify peers against."""
        return self._bundle

    def server_context(self) -> ssl.SSLContext:
        """The server context for the next accepted connection."""
        if self._server is None:
            raise RenewalError(f"{self.spiffe_id} has no certificate yet")
        return self._server

    def client_context(self) -> MeshClientContext:
        """The client context for the next outbound connection (it carries the session cache)."""
        if self._client is None:
            raise RenewalError(f"{self.spiffe_id} has no certificate yet")
        return self._client

    def seconds_to_expiry(self) -> float:
        """Seconds until the current leaf expires (negative once expired, 0.0 with no certificate)."""
        if not self._chain:
            return 0.0
        return (self._chain[0].not_valid_after_utc - self._clock()).total_seconds()

    @property
    def renewal_due(self) -> datetime | None:
        """When the next renewal is planned (None before the first certificate)."""
        return self._due

    # ----- updates --------------------------------------------------------------------------------------

    def update_bundle(self, bundle: TrustBundle) -> bool:
        """Adopt a newer trust bundle and rebuild the contexts (new connections only); True if it changed.

        A bundle with a lower sequence than the current one is ignored (stale update).
        """
        if bundle.trust_domain != self._bundle.trust_domain:
            raise ValueError(f"bundle for {bundle.trust_domain!r}, expected {self._bundle.trust_domain!r}")
        if bundle.sequence < self._bundle.sequence:
            return False
        same = {r.fingerprint(hashes.SHA256()) for r in bundle.roots} == {
            r.fingerprint(hashes.SHA256()) for r in self._bundle.roots
        }
        self._bundle = bundle
        if same:
            return False
        if self._key is not None:
            self._build_contexts(self._chain, self._key)
        log.info("trust bundle for %s updated to sequence %d", self.spiffe_id, bundle.sequence)
        return True

    def _build_contexts(self, chain: list[x509.Certificate], key: SigningKey) -> None:
        server = server_context(chain, key, self._bundle)
        client = client_context(chain, key, self._bundle)
        self._server, self._client = server, client

    def _install(self, chain: list[x509.Certificate], key: SigningKey) -> None:
        self._build_contexts(chain, key)
        self._chain, self._key = chain, key
        leaf = chain[0]
        # from now, not from notBefore: the CA backdates notBefore (clock skew), and with a short
        # certificateTTL a plan from notBefore fell due at once, renewal after renewal
        start = max(self._clock(), leaf.not_valid_before_utc)
        lifetime = leaf.not_valid_after_utc - start
        low = self._renew_at - self._jitter / 2
        fraction = low + self._rng.random() * self._jitter
        self._due = start + lifetime * fraction

    async def renew(self) -> None:
        """One renewal attempt: new key, CSR, sign, check, install. Raises RenewalError on failure and then
        leaves the current certificate in place."""
        key = self._key_factory()
        csr = make_csr(key, self.spiffe_id)
        try:
            chain = list(await self._sign(csr))
        except Exception as exc:
            raise RenewalError(f"signing failed: {type(exc).__name__}: {exc}") from exc
        if not chain:
            raise RenewalError("signer returned an empty chain")
        now = self._clock()
        try:
            got = check_leaf(chain[0], self._bundle.trust_domain, now=now)
            if got != self.spiffe_id:
                raise RenewalError(f"signer returned an SVID for {got}, expected {self.spiffe_id}")
            if chain[0].public_key() != key.public_key():
                raise RenewalError("signer returned a certificate for another key")
            verify_chain(chain, self._bundle.roots, now=now)
        except SvidError as exc:
            raise RenewalError(f"new certificate not usable yet: {exc}") from None
        self._install(chain, key)
        self.renewals += 1
        if self._on_renewed is not None:
            try:
                self._on_renewed(list(chain), key)
            except Exception:  # persisting is best effort; the new certificate is in use anyway
                log.exception("could not hand the renewed certificate of %s on", self.spiffe_id)
        log.info("renewed %s until %s", self.spiffe_id, chain[0].not_valid_after_utc.isoformat())

    # ----- background loop ------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_initial * 2.0 ** min(attempt, 60))
        return ceiling / 2 + self._rng.random() * ceiling / 2

    async def _renew_with_backoff(self) -> None:
        attempt = 0
        while True:
            try:
                await self.renew()
                self.last_error = None
                return
            except RenewalError as exc:
                self.failures += 1
                self.last_error = str(exc)
                delay = self._backoff(attempt)
                left = self.seconds_to_expiry()
                if self._chain and left <= 0:
                    log.error("%s: certificate EXPIRED and renewal failing: %s", self.spiffe_id, exc)
                else:
                    log.warning(
                        "%s: renewal failed (%s); retry in %.1fs, current certificate valid %.0fs more",
                        self.spiffe_id,
                        exc,
                        delay,
                        left,
                    )
                attempt += 1
                await self._sleep(delay)

    async def run(self) -> None:
        """Obtain a certificate if there is none, then renew forever (cancel to stop)."""
        if not self._chain:
            await self._renew_with_backoff()
        while True:
            assert self._due is not None
            delay = (self._due - self._clock()).total_seconds()
            if delay > 0:
                self._wake.clear()
                sleeper = asyncio.ensure_future(self._sleep(delay))
                waker = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    waker.cancel()
                if (self._due - self._clock()).total_seconds() > 0:
                    continue
            await self._renew_with_backoff()

    def renew_soon(self) -> None:
        """Ask the background loop to renew now (e.g. after a root rotation)."""
        self._due = self._clock()
        self._wake.set()

    async def start(self) -> None:
        """Get the first certificate (retrying) and start the background renewal task."""
        if not self._chain:
            await self._renew_with_backoff()
        self._task = asyncio.create_task(self.run(), name=f"svid-renewal {self.spiffe_id}")

    async def stop(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
