"""The real ``meshgate control-plane`` and ``meshgate token create`` processes: a SIGTERM restart loses
nothing, a watching client reconnects, tokens made by the CLI work, and start-up failures exit 1
with one clear line."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cp_testlib import (
    TD,
    ControlPlaneProcess,
    Endpoint,
    copy_policies,
    error_of,
    free_port,
    join,
    register_body,
    run_cli,
    sign_with_token,
)

from shared.identity.spiffeid import workload_id
from shared.registry.client import RegistryClient


@pytest.fixture(scope="module")
def cli_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProcess]:
    proc = ControlPlaneProcess(tmp_path_factory.mktemp("cli") / "data")
    try:
        proc.start()
        yield proc
        assert proc.stop() == 0
    finally:
        proc.kill()


def _token_cli(data_dir: Path, service: str, *extra: str) -> str:
    done = run_cli("token", "create", "--data-dir", str(data_dir), "--service", service, *extra)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mgt1."), done.stdout
    assert f"join token for service {service}" in done.stderr
    return lines[0]


def _snapshot_state(ep: Endpoint) -> dict[str, Any]:
    with ep.admin() as http:
        services = http.get("/v1/services").json()
        return {
            "bundle": http.get("/v1/bundle").json(),
            "index": http.get("/v1/snapshot").json()["index"],
            "instances": {
                v["id"]: (v["service"], v["address"], v["port"], v["metadata"], v["health"], v["identity"])
                for views in services.values()
                for v in views
            },
        }


def test_a_sigterm_restart_loses_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ControlPlaneProcess(data)
    try:
        ep = first.start()
        unused = _token_cli(data, "web")
        reusable = _token_cli(data, "catalog", "--reusable")
        spent = ep.token("orders")
        orders = join(ep, "orders", spent)
        with orders.client() as http:
            assert (
                http.post("/v1/register", json=register_body("orders", 1, id="orders-1")).status_code == 201
            )
            assert http.put("/v1/heartbeat/orders-1", json={"status": "warning"}).status_code == 200
        with ep.admin() as http:
            body = register_body("web", 2, id="web-2", metadata={"v": "2"}, ttl="1h")
            assert http.post("/v1/register", json=body).status_code == 201
        before = _snapshot_state(ep)
        assert first.stop() == 0  # SIGTERM: drained and exited cleanly
    finally:
        first.kill()

    second = ControlPlaneProcess(data, log_path=tmp_path / "second.log")
    try:
        ep2 = second.start()
        assert ep2.admin_token == ep.admin_token
        after = _snapshot_state(ep2)
        assert after["bundle"] == before["bundle"]  # same CA
        assert after["instances"] == before["instances"]  # every registration, with its reported health
        assert after["index"] > before["index"]  # the index never goes back: watchers resume by it
        # tokens: the unused ones still work, the spent one is still spent
        for token in (unused, reusable, reusable):
            r, _ = sign_with_token(ep2, token)
            assert r.status_code == 200, r.text
        r, _ = sign_with_token(ep2, spent)
        assert r.status_code == 401 and "already used" in error_of(r)[1]
        # an SVID issued before the restart still authenticates
        orders.endpoint = ep2
        with orders.client() as http:
            assert http.put("/v1/heartbeat/orders-1", json={"status": "passing"}).status_code == 200
        assert second.stop() == 0
    finally:
        second.kill()


def test_a_watching_client_reconnects_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = ControlPlaneProcess(data)
    second: ControlPlaneProcess | None = None
    try:
        ep = first.start()
        token = ep.token("orders")

        async def scenario() -> None:
            nonlocal second
            client = RegistryClient(
                ep.url, service="orders", token=token, cache_dir=tmp_path / "cache", wait=1
            )
            seen: list[dict[str, Any]] = []
            changed = asyncio.Event()
            stop = asyncio.Event()

            def listener(snapshot: dict[str, Any]) -> None:
                seen.append(snapshot)
                changed.set()

            try:
                await client.bootstrap()
                task = asyncio.create_task(client.watch(listener, stop))
                await asyncio.wait_for(changed.wait(), 5)
                changed.clear()
                assert await asyncio.to_thread(first.stop) == 0
                await asyncio.sleep(0.5)  # the watch is failing and backing off now
                second = ControlPlaneProcess(data, port=first.port, log_path=tmp_path / "second.log")
                ep2 = await asyncio.to_thread(second.start)
                async with ep2.async_admin() as http:
                    r = await http.post("/v1/register", json=register_body("web", 3, id="web-after-restart"))
                    assert r.status_code == 201
                for _ in range(20):  # bounded: backoff is at most ~1.6 s at this point
                    await asyncio.wait_for(changed.wait(), 10)
                    changed.clear()
                    if "web-after-restart" in {e["id"] for e in seen[-1]["endpoints"].get("web", [])}:
                        break
                else:
                    raise AssertionError("the watch never saw the registration made after the restart")
                stop.set()
                async with ep2.async_admin() as http:  # wake the parked blocking query
                    await http.delete("/v1/register/web-after-restart")
                await asyncio.wait_for(task, 10)
            finally:
                stop.set()
                await client.close()

        asyncio.run(scenario())
    finally:
        first.kill()
        if second is not None:
            second.kill()


# ----- meshgate token create -------------------------------------------------------------------------------


def test_token_create_prints_a_token_that_works(cli_cp: ControlPlaneProcess) -> None:
    assert cli_cp.endpoint is not None
    token = _token_cli(cli_cp.data_dir, "orders", "--ttl", "10m")
    r, _ = sign_with_token(cli_cp.endpoint, token, workload_id(TD, "orders"))
    assert r.status_code == 200, r.text
    assert r.json()["identity"] == str(workload_id(TD, "orders"))
    again, _ = sign_with_token(cli_cp.endpoint, token)
    assert again.status_code == 401  # single use by default


def test_token_create_with_a_namespace(cli_cp: ControlPlaneProcess) -> None:
    assert cli_cp.endpoint is not None
    token = _token_cli(cli_cp.data_dir, "orders", "--namespace", "prod")
    r, _ = sign_with_token(cli_cp.endpoint, token)
    assert r.status_code == 200 and r.json()["identity"] == f"spiffe://{TD}/ns/prod/sa/orders"


def test_token_create_without_a_ca_says_how_to_get_one(tmp_path: Path) -> None:
    done = run_cli("token", "create", "--data-dir", str(tmp_path), "--service", "orders")
    assert done.returncode == 1 and done.stdout == ""
    assert "no CA in" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--service", "a/b"], "service 'a/b' is not a valid name"),
        (["--service", ".."], "service '..' is not a valid name"),
        (["--service", "Bad_Name"], "service 'Bad_Name' is not a valid name"),
        (["--service", "orders", "--namespace", "x y"], "namespace 'x y' is not a valid name"),
        (["--service", "orders", "--ttl", "0s"], "ttl must be positive"),
    ],
)
def test_token_create_refuses_what_the_api_refuses(tmp_path: Path, argv: list[str], message: str) -> None:
    """Before: a 500 at signing for a/b, or an SVID for a name that can never register."""
    done = run_cli("token", "create", "--data-dir", str(tmp_path), *argv)
    assert done.returncode == 1 and done.stdout == ""
    assert message in done.stderr and "Traceback" not in done.stderr


def test_keys_without_their_state_file_are_never_overwritten(tmp_path: Path) -> None:
    """A lost ca.json: the control plane refuses to start (it made a new root over the old key)."""
    ca_dir = tmp_path / "data" / "ca"
    ca_dir.mkdir(parents=True)
    (ca_dir / "ca-1.key").write_text("the old key\n")
    line = _fails(tmp_path, "--listen", "127.0.0.1:0")
    assert "holds CA files (ca-1.key) but no ca.json" in line
    assert (ca_dir / "ca-1.key").read_text() == "the old key\n"


# ----- start-up failures -----------------------------------------------------------------------------------


def _fails(tmp_path: Path, *extra: str, policies: Path | None = None) -> str:
    argv = ["control-plane", "--policies", str(policies or copy_policies(tmp_path / "policies"))]
    argv += ["--data-dir", str(tmp_path / "data"), *extra]
    done = run_cli(*argv, timeout=15)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("meshgate control-plane: "), done.stderr
    return last


def test_bad_store_url_exits_1(tmp_path: Path) -> None:
    assert "unknown store 'mysql://db/1'" in _fails(
        tmp_path, "--listen", "127.0.0.1:0", "--store", "mysql://db/1"
    )


def test_unreachable_redis_exits_1(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert f"cannot reach Redis store {url}" in _fails(tmp_path, "--listen", "127.0.0.1:0", "--store", url)


def test_unreadable_admin_token_file_exits_1(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    line = _fails(tmp_path, "--listen", "127.0.0.1:0", "--admin-token-file", str(missing))
    assert f"cannot read {missing}" in line


def test_too_short_admin_token_file_exits_1(tmp_path: Path) -> None:
    short = tmp_path / "admin-token"
    short.write_text("abc\n")
    line = _fails(tmp_path, "--listen", "127.0.0.1:0", "--admin-token-file", str(short))
    assert "shorter than 16 characters" in line


def test_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = _fails(tmp_path, "--listen", f"127.0.0.1:{port}")
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_no_valid_policies_and_no_ca_exits_1(tmp_path: Path) -> None:
    broken = copy_policies(tmp_path / "broken")
    mesh = broken / "mesh.yaml"
    mesh.write_text(mesh.read_text().replace("trustDomain:", "trustDomian:"))
    line = _fails(tmp_path, "--listen", "127.0.0.1:0", policies=broken)
    assert "no valid Mesh policy" in line
