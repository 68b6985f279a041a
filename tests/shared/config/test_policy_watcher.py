"""PolicyWatcher: reload on change, swap atomically, keep the last good set on errors."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest
from config_testlib import MESH, write

from shared.config.policyset import PolicySet
from shared.config.watcher import PolicyWatcher

SERVICE = "---\napiVersion: meshgate/v1\nkind: Service\nname: {name}\n"


def folder_with(tmp_path: Path, *services: str) -> Path:
    write(tmp_path, "mesh.yaml", MESH)
    write(tmp_path, "svc.yaml", "".join(SERVICE.format(name=s) for s in services) or "# none\n---\n" + MESH)
    return tmp_path


def edit(path: Path, text: str) -> None:
    """Rewrite ``path`` in place (same inode), as an editor saving over the file does."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def test_initial_load_serves_the_set(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    watcher = PolicyWatcher([tmp_path], interval=0.05)
    assert watcher.current is None
    assert watcher.status.ok is False and watcher.status.generation == 0
    assert watcher.reload() is True
    assert watcher.current is not None
    assert watcher.current.mesh.trust_domain == "example.org"
    status = watcher.status
    assert status.ok and status.errors == ()
    assert status.version == watcher.current.version
    assert status.generation == 1 and status.reloads_ok == 1 and status.reloads_failed == 0
    assert status.files == (str(tmp_path / "mesh.yaml"),)


def test_initial_load_of_a_broken_folder_serves_nothing(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", "apiVersion: meshgate/v1\nkind: Mesh\n")
    watcher = PolicyWatcher([tmp_path])
    assert watcher.reload() is False
    assert watcher.current is None
    assert not watcher.status.ok
    assert watcher.status.version is None
    assert watcher.status.reloads_failed == 1


def test_edit_swaps_in_a_new_version_and_calls_listeners(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    watcher = PolicyWatcher([tmp_path])
    watcher.reload()
    seen: list[PolicySet] = []
    watcher.subscribe(seen.append)
    assert [s.version for s in seen] == [watcher.status.version]  # called at once with the current set
    old = watcher.current
    assert old is not None
    write(tmp_path, "svc.yaml", SERVICE.format(name="web"))
    assert watcher.poll() is True
    new = watcher.current
    assert new is not None and new is not old
    assert new.version != old.version
    assert list(new.services) == ["web"]
    assert seen[-1] is new and len(seen) == 2
    assert watcher.status.generation == 2 and watcher.status.version == new.version


def test_broken_edit_keeps_the_old_set_and_reports_file_line_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    svc = write(tmp_path, "svc.yaml", SERVICE.format(name="web"))
    watcher = PolicyWatcher([tmp_path])
    watcher.reload()
    good = watcher.current
    assert good is not None
    calls: list[PolicySet] = []
    watcher.subscribe(calls.append)
    edit(svc, SERVICE.format(name="web") + "port: eighty\n")
    with caplog.at_level(logging.ERROR, logger="meshgate.policy"):
        assert watcher.poll() is False
    assert watcher.current is good
    assert calls == [good]
    status = watcher.status
    assert status.ok is False
    assert status.version == good.version and status.generation == 1
    assert status.reloads_failed == 1 and status.reloads_ok == 1
    assert [str(e) for e in status.errors] == [
        f"{svc}:5: Service/web: port: Input should be a valid integer, unable to parse string as an "
        "integer; got 'eighty'"
    ]
    assert status.to_json()["errors"] == [str(status.errors[0])]
    assert any("still serving version" in r.getMessage() for r in caplog.records)


def test_fix_after_a_broken_edit_swaps_again(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    svc = write(tmp_path, "svc.yaml", SERVICE.format(name="web"))
    watcher = PolicyWatcher([tmp_path])
    watcher.reload()
    first = watcher.current
    assert first is not None
    edit(svc, "kind: [")
    assert watcher.poll() is False
    assert watcher.status.reloads_failed == 1
    edit(svc, SERVICE.format(name="web") + SERVICE.format(name="api"))
    assert watcher.poll() is True
    assert watcher.current is not None and sorted(watcher.current.services) == ["api", "web"]
    status = watcher.status
    assert status.ok and status.errors == ()
    assert status.generation == 2 and status.reloads_failed == 1 and status.reloads_ok == 2


def test_poll_returns_false_when_nothing_changed(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    watcher = PolicyWatcher([tmp_path])
    assert watcher.poll() is True  # first poll loads
    before = watcher.status
    assert watcher.poll() is False
    assert watcher.poll() is False
    assert watcher.status == before  # not even a reload attempt


def test_comment_only_edit_reloads_but_keeps_the_version(tmp_path: Path) -> None:
    mesh = write(tmp_path, "mesh.yaml", MESH)
    watcher = PolicyWatcher([tmp_path])
    watcher.reload()
    calls: list[PolicySet] = []
    watcher.subscribe(calls.append)
    edit(mesh, "# a comment\n" + MESH)
    assert watcher.poll() is False
    assert len(calls) == 1
    assert watcher.status.ok and watcher.status.generation == 1 and watcher.status.reloads_ok == 2


def test_deleting_a_file_is_a_change(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    svc = write(tmp_path, "svc.yaml", SERVICE.format(name="web"))
    watcher = PolicyWatcher([tmp_path])
    watcher.reload()
    svc.unlink()
    assert watcher.poll() is True
    assert watcher.current is not None and dict(watcher.current.services) == {}


def test_same_size_edit_within_one_timestamp_tick_is_seen(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    svc = write(tmp_path, "svc.yaml", SERVICE.format(name="aaa"))
    watcher = PolicyWatcher([tmp_path])
    watcher.reload()
    st = svc.stat()
    edit(svc, SERVICE.format(name="bbb"))
    os.utime(svc, ns=(st.st_atime_ns, st.st_mtime_ns))  # coarse clocks give both writes one mtime
    assert svc.stat().st_size == st.st_size and svc.stat().st_ino == st.st_ino
    assert watcher.poll() is True
    assert watcher.current is not None and list(watcher.current.services) == ["bbb"]


def test_a_failing_listener_does_not_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    watcher = PolicyWatcher([tmp_path])
    calls: list[str] = []

    def broken(_: PolicySet) -> None:
        raise RuntimeError("listener bug")

    watcher.subscribe(broken)
    watcher.subscribe(lambda s: calls.append(s.version))
    with caplog.at_level(logging.ERROR, logger="meshgate.policy"):
        assert watcher.reload() is True
    assert calls == [watcher.status.version]
    assert any(r.getMessage() == "policy listener failed" for r in caplog.records)


async def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.01)
    return False


def test_run_loads_then_picks_up_a_change_within_a_few_intervals(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    watcher = PolicyWatcher([tmp_path], interval=0.05)

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.run(stop))
        try:
            assert await _wait_for(lambda: watcher.current is not None, 2.0)
            version = watcher.status.version
            write(tmp_path, "svc.yaml", SERVICE.format(name="web"))
            started = time.monotonic()
            assert await _wait_for(lambda: watcher.status.version != version, 2.0)
            return time.monotonic() - started
        finally:
            stop.set()
            await asyncio.wait_for(task, 2.0)

    took = asyncio.run(scenario())
    assert took < 1.0  # a couple of 50 ms intervals, with generous slack for a loaded machine
    assert watcher.current is not None and list(watcher.current.services) == ["web"]


def test_run_stops_promptly_when_asked(tmp_path: Path) -> None:
    write(tmp_path, "mesh.yaml", MESH)
    watcher = PolicyWatcher([tmp_path], interval=10.0)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.run(stop))
        assert await _wait_for(lambda: watcher.current is not None, 2.0)
        stop.set()
        await asyncio.wait_for(task, 1.0)

    asyncio.run(scenario())
