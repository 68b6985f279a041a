"""The control-plane client sidecars and gateways use: identity, registration, heartbeats, and the
configuration watch (blocking queries), with a disk cache for static stability.

Start-up order: a cached SVID that is still valid is used as it is (single-use join tokens cannot be
spent twice, and the control plane may be down); otherwise the join token's CA pin authenticates the
control plane's bundle, and the token buys the first SVID. Renewals go over mTLS with the current SVID.
The watch uses Consul-style blocking queries (``/v1/snapshot?index=N&wait=30s``): plain HTTP/1.1
requests that any proxy passes, resumable by index after a disconnect, with no per-watcher state on
the server beyond the open request. Server-Sent Events would save one request per change and no more.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from shared.identity.bundle import BundleError, TrustBundle
from shared.identity.ca import load_chain_pem, make_csr
from shared.identity.rotation import CertificateManager
from shared.identity.spiffeid import SpiffeId, workload_id
from shared.identity.svid import SvidError, check_leaf, verify_chain
from shared.identity.tls import PeerIdentityError, client_context, verify_peer
from shared.registry.backoff import Backoff
from shared.registry.cache import DiskCache
from shared.registry.delta import apply_delta
from shared.registry.http import HttpClient, HttpError, HttpResponse
from shared.registry.jointoken import JoinToken

log = logging.getLogger("meshgate.registry")

CONTROL_PLANE_ID_PATH = "/ns/meshgate-system/sa/control-plane"
SnapshotListener = Callable[[dict[str, Any]], Awaitable[None] | None]


class ControlPlaneUnavailable(Exception):
    """The control plane could not be reached or refused us; the message says which."""


def _pin_of(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


class RegistryClient:
    """One workload's connection to the control plane."""

    def __init__(
        self,
        url: str,
        *,
        service: str,
        namespace: str = "default",
        token: str | None = None,
        bundle: TrustBundle | None = None,
        cache_dir: Path | None = None,
        wait: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.service = service
        self.namespace = namespace
        self.token = token.strip() if token else None
        self.bundle = bundle
        self.cache = DiskCache(cache_dir) if cache_dir is not None else None
        self.wait = wait
        self.timeout = timeout
        self.identity: SpiffeId | None = None
        self.certs: CertificateManager | None = None
        self.index = 0
        self.snapshot: dict[str, Any] | None = None
        self._http: HttpClient | None = None
        self._http_ctx: ssl.SSLContext | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self.instance_id: str | None = None
        self._registration: dict[str, Any] | None = None

    # ----- identity -------------------------------------------------------------------------------------

    def _server_id(self) -> SpiffeId:
        assert self.bundle is not None
        return SpiffeId(self.bundle.trust_domain, CONTROL_PLANE_ID_PATH)

    def _check_server(self, ssl_object: ssl.SSLObject | None) -> None:
        """The control plane must present its own SPIFFE ID (not merely any certificate of the mesh);
        checked after each handshake, before a request is written."""
        assert self.bundle is not None
        try:
            verify_peer(ssl_object, self.bundle.trust_domain, self._server_id())
        except PeerIdentityError as exc:
            raise ControlPlaneUnavailable(f"{self.url} is not the control plane: {exc}") from exc

    async def _fetch_pinned_bundle(self, pin: str) -> TrustBundle:
        """Fetch the bundle without trusting anything yet, then accept it only if a root matches ``pin``."""
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        insecure.minimum_version = ssl.TLSVersion.TLSv1_3
        async with HttpClient(self.url, ssl_context=insecure, timeout=self.timeout) as http:
            try:
                response = await http.get("/v1/bundle")
            except HttpError as exc:
                raise ControlPlaneUnavailable(f"cannot reach {self.url}: {exc}") from exc
        try:
            bundle = TrustBundle.from_jwks(response.json())
        except (ValueError, BundleError) as exc:
            raise ControlPlaneUnavailable(f"{self.url}/v1/bundle is not a SPIFFE bundle: {exc}") from exc
        if not any(_pin_of(root) == pin for root in bundle.roots):
            raise ControlPlaneUnavailable(
                f"{self.url} serves a trust bundle whose roots do not match the join token's CA pin "
                f"{pin[:16]}...: wrong control plane, or a token from another mesh"
            )
        return bundle

    def _use_cached_svid(self) -> bool:
        cached = self.cache.load_svid() if self.cache is not None else None
        if cached is None or self.bundle is None:
            return False
        chain, key = cached
        try:
            identity = check_leaf(chain[0], self.bundle.trust_domain)
            verify_chain(chain, self.bundle.roots)
        except SvidError as exc:
            log.info("cached SVID not usable (%s); asking for a new one", exc)
            return False
        self.identity = identity
        self.certs = CertificateManager(
            identity, self._sign_renewal, self.bundle, chain=chain, key=key, on_renewed=self._save_renewed
        )
        log.info("using cached SVID for %s (expires in %.0fs)", identity, self.certs.seconds_to_expiry())
        return True

    async def bootstrap(self) -> None:
        """Get a trust bundle and an SVID (cached, or signed with the join token); start renewals.

        Raises ControlPlaneUnavailable with a clear message when neither the cache nor the control
        plane can provide them.
        """
        cached_snapshot = self.cache.load_snapshot() if self.cache is not None else None
        if self.bundle is None and cached_snapshot is not None:
            try:
                self.bundle = TrustBundle.from_jwks(cached_snapshot["bundle"])
                self.snapshot, self.index = cached_snapshot, int(cached_snapshot["index"])
            except (BundleError, KeyError, TypeError, ValueError) as exc:
                log.warning("cached snapshot has no usable bundle: %s", exc)
        if self.bundle is None:
            parsed = JoinToken.parse(self.token) if self.token else None
            if parsed is None:
                raise ControlPlaneUnavailable("no trust bundle: give a join token (mgt1...) or a bundle file")
            self.bundle = await self._fetch_pinned_bundle(parsed.ca_pin)
        if not self._use_cached_svid():
            await self._sign_with_token()
        assert self.certs is not None
        if self.cache is not None:
            self.cache.save_svid(self.certs.chain, self._key())
        await self.certs.start()

    def _key(self) -> Any:
        assert self.certs is not None
        return self.certs.key

    def _save_renewed(self, chain: list[x509.Certificate], key: Any) -> None:
        """Keep every renewed SVID in the cache, so that a restart after the first TTL needs no token."""
        if self.cache is not None:
            self.cache.save_svid(chain, key)

    async def _sign_with_token(self) -> None:
        if not self.token:
            raise ControlPlaneUnavailable("no valid cached SVID and no join token to get one")
        assert self.bundle is not None
        identity = workload_id(self.bundle.trust_domain, self.service, self.namespace)
        key = ec.generate_private_key(ec.SECP256R1())
        chain = await self._token_sign(make_csr(key, identity))
        self.identity = identity
        self.certs = CertificateManager(
            identity, self._sign_renewal, self.bundle, chain=chain, key=key, on_renewed=self._save_renewed
        )
        log.info("joined the mesh as %s", identity)

    async def _token_sign(self, csr_pem: bytes) -> list[x509.Certificate]:
        """``POST /v1/sign`` authenticated by the join token (server-authenticated TLS only)."""
        assert self.bundle is not None and self.token
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cadata=self.bundle.to_pem())
        # the peer is checked right after the TLS handshake, before the request (and the token) is written
        async with HttpClient(
            self.url, ssl_context=ctx, timeout=self.timeout, check_peer=self._check_server
        ) as http:
            try:
                response = await http.request(
                    "POST",
                    "/v1/sign",
                    json={"csr": csr_pem.decode()},
                    headers={"authorization": f"Bearer {self.token}"},
                )
            except HttpError as exc:
                raise ControlPlaneUnavailable(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise ControlPlaneUnavailable(f"join refused ({response.status_code}): {_message(response)}")
        return list(load_chain_pem(response.json()["chain"].encode()))

    async def _sign_renewal(self, csr_pem: bytes) -> Sequence[x509.Certificate]:
        """A renewal, authenticated by the current SVID; once that has expired (the control plane was
        away past its end) the control plane refuses it, so the join token signs instead when there is
        one (a reusable token), and the error says what to do when there is none or it is spent."""
        if self.certs is not None and self.certs.seconds_to_expiry() <= 0:
            if not self.token:
                raise ControlPlaneUnavailable(
                    "the certificate has expired (the control plane was unreachable past its end) and "
                    "it cannot be renewed with itself: restart with a new join token"
                )
            try:
                return await self._token_sign(csr_pem)
            except ControlPlaneUnavailable as exc:
                raise ControlPlaneUnavailable(
                    f"the certificate has expired, so only the join token can get a new one, and: {exc}; "
                    "restart with a new join token (or a reusable one)"
                ) from exc
        data = await self._call("POST", "/v1/sign", json={"csr": csr_pem.decode()})
        chain = load_chain_pem(data["chain"].encode())
        return chain

    # ----- HTTP -----------------------------------------------------------------------------------------

    def _client(self) -> HttpClient:
        assert self.certs is not None
        ctx = self.certs.client_context()
        if self._http is None or ctx is not self._http_ctx:
            old = self._http
            # A context of our own with the same SVID and no ALPN (HTTP/1.1): the manager's context is
            # the one the data path dials peers with (ALPN h2).
            own = client_context(self.certs.chain, self._key(), self.certs.bundle)
            own.set_alpn_protocols(["http/1.1"])
            self._http = HttpClient(
                self.url, ssl_context=own, timeout=self.timeout, check_peer=self._check_server
            )
            self._http_ctx = ctx
            if old is not None:
                task = asyncio.get_running_loop().create_task(old.aclose())
                self._closing.add(task)  # held until done: the loop keeps only a weak reference
                task.add_done_callback(self._closing.discard)
        return self._http

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> Any:
        try:
            response = await self._client().request(method, path, json=json, timeout=timeout or self.timeout)
        except HttpError as exc:
            raise ControlPlaneUnavailable(f"{method} {path}: {exc}") from exc
        if response.status_code not in ok:
            raise ControlPlaneUnavailable(f"{method} {path}: {response.status_code} {_message(response)}")
        return response.json() if response.content else None

    async def close(self) -> None:
        """Stop renewals and close connections."""
        if self.certs is not None:
            await self.certs.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ----- registration ---------------------------------------------------------------------------------

    async def register(self, address: str, port: int, **extra: Any) -> str:
        """Register this instance (its sidecar's inbound address); returns the instance id."""
        body = {
            "service": self.service,
            "namespace": self.namespace,
            "address": address,
            "port": port,
            **extra,
        }
        data = await self._call("POST", "/v1/register", json=body)
        self._registration = body | {"id": data["id"]}
        self.instance_id = data["id"]
        return str(data["id"])

    async def heartbeat(
        self, status: str = "passing", output: str = "", report: dict[str, Any] | None = None
    ) -> None:
        """Report liveness, the app check and (optionally) a ``report`` (version, policy version,
        certificate expiry, traffic: see the control plane's HeartbeatBody); re-registers when the
        control plane forgot us."""
        if self.instance_id is None or self._registration is None:
            raise ControlPlaneUnavailable("not registered")
        body: dict[str, Any] = {"status": status, "output": output}
        if report is not None:
            body["report"] = report
        try:
            await self._call("PUT", f"/v1/heartbeat/{self.instance_id}", json=body)
        except ControlPlaneUnavailable as exc:
            if " 404 " not in str(exc):
                raise
            log.warning("control plane forgot instance %s; registering again", self.instance_id)
            await self._call("POST", "/v1/register", json=self._registration)

    async def deregister(self) -> None:
        """Remove this instance (on clean exit)."""
        if self.instance_id is not None:
            await self._call("DELETE", f"/v1/register/{self.instance_id}", ok=(200, 404))
            self.instance_id = None

    # ----- configuration watch --------------------------------------------------------------------------

    async def fetch(
        self, index: int | None = None, wait: float | None = None, *, delta: bool = False
    ) -> dict[str, Any]:
        """One snapshot; with ``index``, a blocking query that returns when the index passes it, and
        with ``delta`` only what changed since ``index`` (merge it with :func:`apply_delta`)."""
        if index is None:
            path = "/v1/snapshot"
            timeout = self.timeout
        else:
            seconds = self.wait if wait is None else wait
            path = f"/v1/snapshot?index={index}&wait={seconds:g}s" + ("&delta=1" if delta else "")
            timeout = seconds + self.timeout
        data: dict[str, Any] = await self._call("GET", path, timeout=timeout)
        return data

    async def _accept(self, snapshot: dict[str, Any], listener: SnapshotListener | None) -> None:
        self.snapshot = snapshot
        self.index = int(snapshot["index"])
        if self.cache is not None:
            self.cache.save_snapshot(snapshot)
        if self.certs is not None and snapshot.get("bundle"):
            try:
                bundle = TrustBundle.from_jwks(snapshot["bundle"], self.certs.bundle.trust_domain)
                if self.certs.update_bundle(bundle):
                    self.bundle = bundle
                    self.certs.renew_soon()  # a rotated root signs new leaves: get one
            except (BundleError, ValueError) as exc:
                log.warning("snapshot %d carries an unusable bundle: %s", self.index, exc)
        if listener is not None:
            result = listener(snapshot)
            if inspect.isawaitable(result):
                await result

    async def watch(
        self, listener: SnapshotListener | None = None, stop: asyncio.Event | None = None
    ) -> None:
        """Follow the configuration until ``stop`` is set, reconnecting with backoff and jitter.

        A cached snapshot (if any) is delivered first, so callers can serve before the control plane
        answers.
        """
        stop = stop or asyncio.Event()
        backoff = Backoff(0.2, 30.0)
        if self.snapshot is not None and listener is not None:
            result = listener(self.snapshot)
            if inspect.isawaitable(result):
                await result
        first = self.snapshot is None
        while not stop.is_set():
            try:
                update = await self.fetch(None if first else self.index, delta=not first)
                snapshot = apply_delta(None if first else self.snapshot, update)
            except ControlPlaneUnavailable as exc:
                delay = backoff.next()
                log.warning(
                    "configuration watch: %s; retrying in %.1fs (serving index %d)", exc, delay, self.index
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                continue
            backoff.reset()
            if first or int(snapshot["index"]) != self.index:
                first = False
                await self._accept(snapshot, listener)


def _message(response: HttpResponse) -> str:
    try:
        data = response.json()
        return str(data.get("message") or data)
    except ValueError:
        return response.text[:200]
