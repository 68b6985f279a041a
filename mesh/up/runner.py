"""``meshgate up``: start a :class:`StackPlan`'s processes, stream their logs, stop them in order.

Start order: collector (when no OTLP endpoint), control plane, join tokens, apps with their sidecars,
gateway; ready once every readiness URL answers 200 and the gateway and sidecars know every service's
instances. Stop order on SIGINT/SIGTERM: gateway, sidecars (they drain), apps, control plane. Children run
in their own process group, so a Ctrl-C reaches only ``up``, which stops them in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from mesh.controlplane.cli import TokenError, issue_join_token
from mesh.up.plan import ProcessPlan, StackPlan, fill, plan_workloads
from shared.telemetry.collector import Collector

STOP_GRACE = 15.0
TOKEN_TTL = 24 * 3600.0


def prometheus_config(state: dict[str, Any]) -> str:
    """A Prometheus configuration for a running stack: every admin port over HTTP, labelled with
    the process's name and role, and the control plane over HTTPS (its own CA: not verified, on
    loopback only)."""
    targets = [
        {"targets": [p["admin"].split("://", 1)[1]], "labels": {"workload": p["name"], "role": p["role"]}}
        for p in state["processes"]
        if p["admin"]
    ]
    control_plane = {
        "targets": [state["controlPlane"].split("://", 1)[1]],
        "labels": {"workload": "control-plane", "role": "control-plane"},
    }
    config = {
        "global": {"scrape_interval": "5s"},
        "scrape_configs": [
            {"job_name": "meshgate", "static_configs": targets},
            {
                "job_name": "meshgate-control-plane",
                "scheme": "https",
                "tls_config": {"insecure_skip_verify": True},
                "static_configs": [control_plane],
            },
        ],
    }
    header = "# Written by meshgate up for this run: prometheus --config.file=THIS_FILE\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def _count(endpoints: object) -> int:
    """Endpoints in an admin ``/config``: a list (sidecar) or a number (gateway)."""
    if isinstance(endpoints, int):
        return endpoints
    return len(endpoints) if isinstance(endpoints, list | dict) else 0


def shown_path(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (shorter commands), else absolute."""
    resolved = path.absolute()
    try:
        return str(resolved.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(resolved)


class StartError(Exception):
    """The stack could not start; the message says which part and why."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the stack was starting."""


class Running:
    """One started child process and the task that copies its output."""

    def __init__(self, plan: ProcessPlan, proc: asyncio.subprocess.Process, pump: asyncio.Task[None]) -> None:
        self.plan, self.proc, self.pump = plan, proc, pump
        self.expected_exit = False


class Stack:
    """Runs one plan; :meth:`run` returns the process exit code for ``meshgate up``."""

    def __init__(self, plan: StackPlan, out: TextIO | None = None, ready_timeout: float = 90.0) -> None:
        self.plan = plan
        self.out = out or sys.stdout
        self.ready_timeout = ready_timeout
        self.running: list[Running] = []
        self.collector: Collector | None = None
        self.width = 14
        self.stopping = asyncio.Event()
        self.died: asyncio.Queue[Running] = asyncio.Queue()
        self.watchers: set[asyncio.Task[None]] = set()

    def say(self, text: str) -> None:
        """A line of ``up``'s own."""
        self.out.write(f"{'up':<{self.width}} | {text}\n")
        self.out.flush()

    async def run(self) -> int:
        """Start, print the ready line and examples, wait for a signal or a death, stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        code = 0
        try:
            await self._start()
        except StartError as exc:
            self.say(f"error: {exc}")
            code = 1
        except Interrupted:
            self.say("interrupted while starting; stopping")
        else:
            code = await self._serve()
        finally:
            await self._stop_all()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        return code

    # -- start-up ------------------------------------------------------------------------------------

    async def _start(self) -> None:
        plan, stack = self.plan, self.plan.stack
        plan.data_dir.mkdir(parents=True, exist_ok=True)
        self.say(f"stack {stack.name!r} from {plan.file}; state in {plan.data_dir}")
        self.say(f"policies: {plan.policies}")
        if stack.redis:
            self.say(f"redis: {stack.redis} (gateway rate limits)")
        else:
            self.say(
                "redis: none configured; running on the embedded defaults: rate limits are counted "
                "inside the gateway process, the control plane keeps its registry in SQLite"
            )
        if plan.collector is not None:
            try:
                self.collector = Collector(*plan.collector).start()
            except OSError as exc:
                raise StartError(
                    f"cannot listen on {plan.collector[0]}:{plan.collector[1]} for the embedded trace "
                    f"collector: {exc.strerror}; set tracing.collector to a free port or tracing.otlpEndpoint"
                ) from exc
            self.say(f"tracing: embedded OTLP/HTTP collector at {self.collector.url}/v1/traces")
        else:
            self.say(f"tracing: OTLP/HTTP to {plan.otlp_endpoint}")
        await self._launch([plan.control_plane])
        await self._await_ready([plan.control_plane])
        tokens = await self._tokens()
        plan_workloads(plan, tokens)
        self.width = max(len(p.name) for p in plan.processes()) + 1
        workloads = [p for pair in plan.services for p in pair]
        await self._launch(workloads)
        await self._await_ready(workloads)
        if plan.gateway is not None:
            await self._launch([plan.gateway])
            await self._await_ready([plan.gateway])
        await self._await_discovery()

    async def _launch(self, plans: Sequence[ProcessPlan]) -> None:
        for p in plans:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *p.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=p.cwd,
                    env={**os.environ, **p.env},
                    process_group=0,
                )
            except OSError as exc:
                raise StartError(
                    f"cannot start {p.name} ({' '.join(p.argv)}): {exc.strerror or exc}"
                ) from exc
            running = Running(p, proc, asyncio.create_task(self._pump(p.name, proc)))
            self.running.append(running)
            self.watchers.add(asyncio.create_task(self._watch(running)))

    async def _pump(self, name: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the stream limit: show what there is
                line = await proc.stdout.read(65536)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.out.write(f"{name:<{self.width}} | {text}\n")
            self.out.flush()

    async def _watch(self, running: Running) -> None:
        await running.proc.wait()
        if not running.expected_exit:
            await self.died.put(running)

    async def _await_ready(self, plans: Sequence[ProcessPlan]) -> None:
        pending = [p for p in plans if p.ready]
        deadline = asyncio.get_running_loop().time() + self.ready_timeout
        async with httpx.AsyncClient(verify=False, timeout=2.0, trust_env=False) as client:
            while pending:
                self._check_deaths()
                if self.stopping.is_set():
                    raise Interrupted
                for p in list(pending):
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(p.ready or "")).status_code == 200:
                            pending.remove(p)
                            self.say(f"{p.name} is ready")
                if pending and asyncio.get_running_loop().time() > deadline:
                    names = ", ".join(p.name for p in pending)
                    raise StartError(
                        f"not ready after {self.ready_timeout:.0f}s: {names} (their logs are above)"
                    )
                await asyncio.sleep(0.1)

    async def _await_discovery(self) -> None:
        """Until the gateway and every sidecar have every service's instances."""
        wanted = {s.name: s.replicas for s in self.plan.stack.services}
        admins = [p for p in self.plan.processes() if p.role in ("gateway", "sidecar") and p.admin]
        deadline = asyncio.get_running_loop().time() + self.ready_timeout
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while admins:
                self._check_deaths()
                if self.stopping.is_set():
                    raise Interrupted
                for p in list(admins):
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
                        endpoints = (await client.get(f"{p.admin}/config")).json()["endpoints"]
                        if all(_count(endpoints.get(name)) >= n for name, n in wanted.items()):
                            admins.remove(p)
                if admins and asyncio.get_running_loop().time() > deadline:
                    names = ", ".join(p.name for p in admins)
                    raise StartError(f"{names} did not learn every service's instances in time")
                await asyncio.sleep(0.1)

    def _check_deaths(self) -> None:
        if not self.died.empty():
            dead = self.died.get_nowait()
            raise StartError(
                f"{dead.plan.name} exited with code {dead.proc.returncode} before the stack was ready "
                "(its last lines are above)"
            )

    async def _tokens(self) -> dict[str, Path]:
        folder = self.plan.data_dir / "tokens"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        names = [s.name for s in self.plan.stack.services]
        if self.plan.stack.gateway is not None:
            names.append("gateway")
        namespaces = {s.name: s.namespace for s in self.plan.stack.services}
        tokens: dict[str, Path] = {}
        for name in names:
            try:
                token = await asyncio.to_thread(
                    issue_join_token,
                    self.plan.data_dir / "control-plane",
                    name,
                    namespace=namespaces.get(name, "default"),
                    ttl=TOKEN_TTL,
                    reusable=True,
                    store=self.plan.stack.control_plane.store,
                )
            except TokenError as exc:
                raise StartError(f"cannot make a join token for {name}: {exc}") from exc
            path = folder / f"{name}.token"
            path.touch(mode=0o600)
            path.write_text(token + "\n")
            tokens[name] = path
        return tokens

    # -- running -------------------------------------------------------------------------------------

    def examples(self) -> list[tuple[str, str]]:
        """(comment, command) for every example of the stack, placeholders filled."""
        plan = self.plan
        python = shown_path(Path(sys.executable))
        meshgate = Path(sys.executable).parent / "meshgate"
        values = {
            "gateway": plan.gateway_url or "",
            "gatewayAdmin": (plan.gateway.admin or "") if plan.gateway else "",
            "controlPlane": plan.control_plane_url,
            "traces": f"{self.collector.url}/traces" if self.collector else "",
            "python": python,
            "meshgate": shown_path(meshgate) if meshgate.exists() else f"{python} -m shared.cli",
            "dir": shown_path(plan.folder),
            "workdir": shown_path(plan.workdir),
            "policies": shown_path(plan.policies),
            "dataDir": shown_path(plan.data_dir),
        }
        for app, sidecar in reversed(plan.services):
            values[f"admin:{app.service}"] = sidecar.admin or ""
        return [(e.say, fill(e.run, values)) for e in plan.stack.examples]

    def write_state(self) -> Path:
        """``DATA_DIR/stack.json`` (every process: role, pid, admin and readiness URLs) and
        ``DATA_DIR/prometheus.yml``, a Prometheus configuration that scrapes every admin port
        (``prometheus --config.file=...``); returns the folder."""
        plan = self.plan
        processes = [
            {
                "name": r.plan.name,
                "role": r.plan.role,
                "service": r.plan.service,
                "pid": r.proc.pid,
                "admin": r.plan.admin,
                "ready": r.plan.ready,
            }
            for r in self.running
        ]
        state = {
            "name": plan.stack.name,
            "gateway": plan.gateway_url,
            "controlPlane": plan.control_plane_url,
            "traces": f"{self.collector.url}/traces" if self.collector else None,
            "processes": processes,
        }
        (plan.data_dir / "stack.json").write_text(json.dumps(state, indent=2) + "\n")
        (plan.data_dir / "prometheus.yml").write_text(prometheus_config(state))
        return plan.data_dir

    async def _serve(self) -> int:
        plan = self.plan
        folder = shown_path(self.write_state())
        self.say(
            f"processes and admin ports: {folder}/stack.json; to scrape them all: "
            f"prometheus --config.file={folder}/prometheus.yml"
        )
        parts = [f"gateway={plan.gateway_url}"] if plan.gateway_url else []
        parts.append(f"control-plane={plan.control_plane_url}")
        if self.collector is not None:
            parts.append(f"traces={self.collector.url}/traces")
        self.out.write(f"ready: {' '.join(parts)}\n")
        examples = self.examples()
        if examples:
            self.out.write("try:\n")
            for say, run in examples:
                self.out.write(f"  # {say}\n  {run}\n")
        self.out.write("(Ctrl-C stops everything)\n")
        self.out.flush()
        code = 0
        stop = asyncio.create_task(self.stopping.wait())
        try:
            while True:
                death = asyncio.create_task(self.died.get())
                done, _ = await asyncio.wait({stop, death}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    death.cancel()
                    self.say("stopping")
                    return code
                dead = death.result()
                code = 1
                self.say(
                    f"{dead.plan.name} exited with code {dead.proc.returncode}; the rest keeps running "
                    "(Ctrl-C stops everything)"
                )
        finally:
            stop.cancel()

    # -- stopping ------------------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        order = ("gateway", "sidecar", "app", "control-plane")
        for role in order:
            group = [r for r in self.running if r.plan.role == role and r.proc.returncode is None]
            await asyncio.gather(*(self._stop(r) for r in group))
        for r in self.running:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(r.pump, 2.0)
        if self.collector is not None:
            self.collector.close()
            self.collector = None

    async def _stop(self, r: Running) -> None:
        """SIGTERM to the command's whole process group (each leads its own), SIGKILL after the grace:
        a command that wraps the app (``sh -c "app; ..."``, ``npm start``) does not pass signals on,
        and the app would outlive ``up`` holding its port."""
        r.expected_exit = True
        group = r.proc.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE
        _signal_group(group, signal.SIGTERM)
        try:
            await asyncio.wait_for(r.proc.wait(), STOP_GRACE)
        except TimeoutError:
            self.say(f"{r.plan.name} did not stop within {STOP_GRACE:.0f}s; killing it")
            _signal_group(group, signal.SIGKILL)
            await r.proc.wait()
        while _group_alive(group) and loop.time() < deadline:  # what the command started
            await asyncio.sleep(0.1)
        if _group_alive(group):
            self.say(f"processes {r.plan.name} started did not stop within {STOP_GRACE:.0f}s; killing them")
            _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
