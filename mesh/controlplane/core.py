"""The control plane's state and operations, independent of HTTP: CA, policies, registry, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.controlplane.casync import BLOB_NAME, pack_ca_dir, unpack_ca_dir
from mesh.controlplane.records import InstanceRecord, JoinToken, new_token
from mesh.controlplane.registry import Registry
from mesh.controlplane.reports import ReportBook
from mesh.controlplane.snapshots import SnapshotBuilder
from mesh.controlplane.stores.base import Store, StoreError
from shared.config.policyset import PolicySet
from shared.config.watcher import PolicyWatcher
from shared.identity.ca import CAError, CertificateAuthority, chain_pem, make_csr
from shared.identity.spiffeid import SpiffeId, workload_id
from shared.identity.tls import server_context

log = logging.getLogger("meshgate.controlplane")

CONTROL_PLANE_NAMESPACE = "meshgate-system"
CONTROL_PLANE_SERVICE = "control-plane"


class ControlPlaneError(Exception):
    """The control plane cannot start or act; the message says what to fix."""


@dataclass
class Counters:
    """Plain counters behind ``/metrics``."""

    csr_signed: int = 0
    csr_rejected: int = 0
    registrations: int = 0
    snapshot_builds: int = 0
    watchers: int = 0
    auth_failures: dict[str, int] = field(  # refused join tokens by reason (api.TOKEN_PROBLEMS)
        default_factory=lambda: dict.fromkeys(("unknown", "bad-secret", "expired", "used"), 0)
    )


def ca_pin(ca: CertificateAuthority) -> str:
    """Hex SHA-256 of the first root: what join tokens carry."""
    return ca.roots()[0].fingerprint(hashes.SHA256()).hex()


def load_or_init_ca(ca_dir: Path, trust_domain: str | None) -> CertificateAuthority:
    """Load the CA in ``ca_dir``, or make a new root for ``trust_domain`` if there is none."""
    if (ca_dir / "ca.json").exists():
        try:
            ca = CertificateAuthority.load(ca_dir)
        except CAError as exc:
            raise ControlPlaneError(f"cannot load the CA in {ca_dir}: {exc}") from exc
        if trust_domain is not None and ca.trust_domain != trust_domain:
            raise ControlPlaneError(
                f"the CA in {ca_dir} is for trust domain {ca.trust_domain!r} but the Mesh policy says "
                f"{trust_domain!r}; fix the policy or use another --data-dir"
            )
        return ca
    if trust_domain is None:
        raise ControlPlaneError(
            f"no CA in {ca_dir} and no valid Mesh policy to take the trust domain from; "
            "fix the policies (meshgate policy check) or run 'meshgate ca init'"
        )
    try:
        ca = CertificateAuthority.init(ca_dir, trust_domain)
    except CAError as exc:  # e.g. keys left without their state file: never overwritten
        raise ControlPlaneError(f"cannot create a CA in {ca_dir}: {exc}") from exc
    log.info("created a new CA for trust domain %s in %s", trust_domain, ca_dir)
    return ca


def read_or_create_admin_token(path: Path) -> str:
    """The admin token in ``path``; a new random one (file mode 0600) when the file does not exist."""
    if path.exists():
        token = path.read_text().strip()
        if len(token) < 16:
            raise ControlPlaneError(f"admin token in {path} is shorter than 16 characters")
        return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    log.info("wrote a new admin token to %s", path)
    return token


class ControlPlane:
    """Everything the API serves, and the background tasks that keep it current."""

    def __init__(
        self,
        *,
        policies: list[Path],
        data_dir: Path,
        store: Store,
        admin_token: str | None = None,
        reap_after: float = 60.0,
        policy_interval: float = 0.25,
        sweep_interval: float = 1.0,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.watcher = PolicyWatcher(policies, interval=policy_interval)
        self.registry = Registry(store, reap_after=reap_after)
        self.reports = ReportBook()  # what sidecars report with heartbeats (the dashboard's data)
        self.admin_token = admin_token
        self.counters = Counters()
        self.policy_interval = policy_interval
        self.sweep_interval = sweep_interval
        self.started_at = time.time()
        self.ca: CertificateAuthority
        self._ca_mtime = 0.0
        self._ca_blob = b""
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._snapshots = SnapshotBuilder()
        self._server_ctx: ssl.SSLContext | None = None
        self._server_renew_at = 0.0
        self.server_cert_expires_at: float | None = None  # the control plane's own SVID (Unix time)
        self._policy_json: dict[str, Any] | None = None
        self._policy_version: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bumps: set[asyncio.Task[int]] = set()

    @property
    def shares_ca(self) -> bool:
        """True when the CA is shared with other replicas through the store."""
        return self.store.kind == "redis"

    @property
    def trust_domain(self) -> str:
        """The mesh's trust domain (the CA's)."""
        return self.ca.trust_domain

    # ----- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, load the CA and policies, start watching. Raises ControlPlaneError."""
        self._loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.admin_token is None:
            self.admin_token = read_or_create_admin_token(self.data_dir / "admin-token")
        try:
            await self.store.open()
        except StoreError as exc:
            raise ControlPlaneError(str(exc)) from exc
        self.watcher.reload()
        current = self.watcher.current
        ca_dir = self.data_dir / "ca"
        shared_blob = await self.store.get_blob(BLOB_NAME) if self.shares_ca else None
        if shared_blob is not None:
            unpack_ca_dir(shared_blob, ca_dir)
        self.ca = load_or_init_ca(ca_dir, current.mesh.trust_domain if current else None)
        if self.shares_ca and shared_blob is None:
            if not await self.store.put_blob(BLOB_NAME, pack_ca_dir(ca_dir), only_if_absent=True):
                # another replica published its CA first: use that one
                unpack_ca_dir(await self.store.get_blob(BLOB_NAME) or b"{}", ca_dir)
                self.ca = load_or_init_ca(ca_dir, current.mesh.trust_domain if current else None)
        self._ca_blob = pack_ca_dir(ca_dir) if self.shares_ca else b""
        self._ca_mtime = self._ca_state_mtime()
        self._issue_server_identity()
        if current is not None:
            self._policy_json = current.to_json()
            self._policy_version = current.version
        await self.registry.start(self.sweep_interval)
        self.watcher.subscribe(self._on_policy)
        await self.registry.bump("control plane started")
        self._tasks = [
            asyncio.create_task(self.watcher.run(self._stop), name="policy-watch"),
            asyncio.create_task(self._watch_ca(), name="ca-watch"),
        ]

    async def stop(self) -> None:
        """Stop background work and close the store."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.registry.stop()
        await self.store.close()

    def _on_policy(self, policy_set: PolicySet) -> None:
        """Watcher listener. The watcher polls on a worker thread (``asyncio.to_thread``), so the new
        set is handed to the event loop rather than applied here."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._apply_policy(policy_set)
        else:
            loop.call_soon_threadsafe(self._apply_policy, policy_set)

    def _apply_policy(self, policy_set: PolicySet) -> None:
        if policy_set.mesh.trust_domain != self.ca.trust_domain:
            log.error(
                "policy version %s names trust domain %s, the CA serves %s: ignored",
                policy_set.version,
                policy_set.mesh.trust_domain,
                self.ca.trust_domain,
            )
            return
        self._policy_json = policy_set.to_json()
        self._policy_version = policy_set.version
        task = asyncio.get_running_loop().create_task(
            self.registry.bump(f"policy version {policy_set.version}")
        )
        self._bumps.add(task)
        task.add_done_callback(self._bumps.discard)

    def _ca_state_mtime(self) -> float:
        try:
            return (self.data_dir / "ca" / "ca.json").stat().st_mtime
        except OSError:
            return 0.0

    async def _watch_ca(self) -> None:
        """Reload the CA when an operator rotates it (``meshgate ca rotate`` edits ca.json)."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.policy_interval)
            ca_dir = self.data_dir / "ca"
            if self.shares_ca:
                try:
                    blob = await self.store.get_blob(BLOB_NAME)
                except Exception as exc:  # the store being away must not stop the watch
                    log.warning("cannot read the shared CA from the store: %s", exc)
                    blob = None
                if blob is not None and blob != self._ca_blob:
                    log.info("the shared CA changed in the store; adopting it")
                    unpack_ca_dir(blob, ca_dir)
                    self._ca_blob = blob
            if time.time() >= self._server_renew_at:
                log.info("renewing the control plane's own certificate (half its lifetime has passed)")
                self._issue_server_identity()
            mtime = self._ca_state_mtime()
            if mtime == self._ca_mtime:
                continue
            self._ca_mtime = mtime
            try:
                before = self.ca.bundle().sequence
                self.ca = CertificateAuthority.load(self.data_dir / "ca")
            except CAError as exc:
                log.error("CA changed on disk but cannot be loaded (%s); keeping the loaded one", exc)
                continue
            self._issue_server_identity()
            if self.shares_ca:
                packed = pack_ca_dir(ca_dir)
                if packed != self._ca_blob:
                    await self.store.put_blob(BLOB_NAME, packed)
                    self._ca_blob = packed
            if self.ca.bundle().sequence != before:
                log.info("trust bundle is now sequence %d", self.ca.bundle().sequence)
                await self.registry.bump("trust bundle changed")

    # ----- TLS ------------------------------------------------------------------------------------------

    def _issue_server_identity(self) -> None:
        """An SVID for the control plane itself; new handshakes use it (through the SNI callback)."""
        identity = workload_id(self.ca.trust_domain, CONTROL_PLANE_SERVICE, CONTROL_PLANE_NAMESPACE)
        key = ec.generate_private_key(ec.SECP256R1())
        # during a root rotation the retiring authority signs it, so that workloads that still hold only
        # the old bundle (say, restarting from their cache) can verify us and learn the new bundle
        chain = self.ca.sign_csr(make_csr(key, identity), identity, timedelta(hours=24), retiring=True)
        start, end = chain[0].not_valid_before_utc.timestamp(), chain[0].not_valid_after_utc.timestamp()
        self._server_renew_at = start + (end - start) / 2  # renewed by _watch_ca, as workloads renew
        self.server_cert_expires_at = end
        ctx = server_context(chain, key, self.ca.bundle())
        ctx.verify_mode = ssl.CERT_OPTIONAL  # workloads without an SVID yet come with a join token
        ctx.set_alpn_protocols(["http/1.1"])
        # no TLS 1.3 tickets: they are sealed with the listening context's keys, which outlive a bundle
        # change, and a resumed session skips chain verification (clients here do not resume anyway)
        ctx.num_tickets = 0
        self._server_ctx = ctx

    def server_ssl_context(self) -> ssl.SSLContext:
        """The context the listener uses; each handshake switches to the newest identity and bundle."""
        assert self._server_ctx is not None
        outer = self._server_ctx

        def pick(ssl_obj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            if self._server_ctx is not None and ssl_obj.context is not self._server_ctx:
                ssl_obj.context = self._server_ctx

        outer.sni_callback = pick
        return outer

    # ----- operations -----------------------------------------------------------------------------------

    def sign(self, csr_pem: bytes, identity: SpiffeId) -> dict[str, Any]:
        """Sign a CSR for an authenticated identity; returns chain PEM and the bundle."""
        current = self.watcher.current
        ttl = current.mesh.certificate_ttl if current else None
        chain = self.ca.sign_csr(csr_pem, identity, ttl)
        self.counters.csr_signed += 1
        return {
            "identity": str(identity),
            "chain": chain_pem(chain).decode(),
            "expiresAt": chain[0].not_valid_after_utc.timestamp(),
            "bundle": self.ca.bundle().to_jwks(),
        }

    @property
    def namespace(self) -> str:
        """The Mesh's namespace (``default`` before a policy set is loaded)."""
        current = self.watcher.current
        return current.mesh.namespace if current else "default"

    async def create_token(
        self, service: str, namespace: str | None, ttl_s: float, reusable: bool
    ) -> tuple[JoinToken, float]:
        """A join token for ``service``; returns it and its expiry time."""
        current = self.watcher.current
        ns = namespace or (current.mesh.namespace if current else "default")
        token, record = new_token(service, ns, ttl_s, time.time(), ca_pin(self.ca), reusable)
        await self.store.put_token(record)
        return token, record.expires_at

    async def register(self, record: InstanceRecord) -> InstanceRecord:
        """Add an instance to the registry."""
        self.counters.registrations += 1
        return await self.registry.register(record)

    async def snapshot(self, since: int | None = None, *, compress: bool = False) -> tuple[int, bytes]:
        """The current snapshot as JSON bytes (a delta when ``since`` is given), built once per index
        and shared by every watcher; gzip-compressed when ``compress``."""
        await self.registry.sync()
        index = self.registry.index
        if self._snapshots.index != index:
            bundle = self.ca.bundle()
            self._snapshots.refresh(
                index,
                trust_domain=self.ca.trust_domain,
                endpoints=self.registry.healthy_endpoints(self.namespace),
                policy_version=self._policy_version,
                policies=self._policy_json,
                bundle_sequence=bundle.sequence,
                bundle=bundle.to_jwks(),
            )
            self.counters.snapshot_builds += 1
        return index, self._snapshots.render(since, compress=compress)

    async def status(self) -> dict[str, Any]:
        """Policy load state (with the last reload errors), store state, CA and registry figures."""
        views = self.registry.instances()
        health: dict[str, int] = {"passing": 0, "warning": 0, "critical": 0}
        for view in views:
            health[view.health] += 1
        bundle = self.ca.bundle()
        return {
            "index": self.registry.index,
            "policy": self.watcher.status.to_json(),
            "store": await self.store.describe(),
            "ca": {
                "trustDomain": self.ca.trust_domain,
                "bundleSequence": bundle.sequence,
                "roots": len(bundle.roots),
                "inRotation": self.ca.in_rotation,
                "signingCertExpiresAt": self.ca.signing_cert.not_valid_after_utc.timestamp(),
            },
            "registry": {"instances": len(views), "health": health, "watchers": self.counters.watchers},
            "uptimeSeconds": round(time.time() - self.started_at, 1),
        }

    def ready(self) -> bool:
        """Ready when a valid policy set is loaded (the CA and store are open once started)."""
        return self.watcher.current is not None
