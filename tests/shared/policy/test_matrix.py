"""The who-may-call-whom matrix: computed by asking the real engine, so it must agree with
``meshgate policy explain`` for every probe; verdicts, ``default``/``audit`` markers and FILE:LINE rules,
on the repository's policies and on small policy folders."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_testlib import DEFAULT_SERVICES, line_of, load_set, policy

from shared.config.loader import load_policy_set
from shared.config.policyset import PolicySet
from shared.policy.explain import Question, explain
from shared.policy.matrix import MAX_PROBES, Matrix, access_matrix, probes_for

REPO = Path(__file__).resolve().parents[3]
ACCESS = "policies/access.yaml"


@pytest.fixture(scope="module")
def repo_set() -> PolicySet:
    """The repository's policies/, loaded from the repository root as ``meshgate`` is run there."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        result = load_policy_set(["policies"])
    assert result.policy_set is not None, "\n".join(str(e) for e in result.errors)
    return result.policy_set


def rule_at(marker: str, nth: int = 1) -> str:
    return f"{ACCESS}:{line_of(REPO / ACCESS, marker, nth)}"


def assert_agrees_with_explain(policies: PolicySet, matrix: Matrix) -> None:
    """Every probe of every cell is what ``explain`` answers for the same question, and the cell's
    verdict, markers and rule follow from its probes."""
    assert set(matrix.cells) == {(s, t) for s in matrix.services for t in matrix.services}
    for (source, target), cell in matrix.cells.items():
        assert (cell.source, cell.target) == (source, target)
        assert 1 <= len(cell.probes) <= MAX_PROBES
        assert (cell.probes[0].method, cell.probes[0].path) == ("GET", "/")
        for probe in cell.probes:
            answer = explain(policies, Question(source, target, method=probe.method, path=probe.path))
            assert answer.decision == probe.decision, (source, target, probe)
            assert answer.notes == ()
        allowed = [p.decision.allowed for p in cell.probes]
        expected = "allow" if all(allowed) else "deny" if not any(allowed) else "partial"
        assert cell.verdict == expected, (source, target)
        assert cell.default == all(p.decision.rule == "default" for p in cell.probes)
        assert cell.audit == any(
            p.decision.audit is not None and p.decision.audit.allowed != p.decision.allowed
            for p in cell.probes
        )
        example = cell.example
        assert example in cell.probes and example.decision.rule == cell.rule
        assert example.decision.reason == cell.reason
        if cell.verdict == "partial":
            assert example.decision.allowed  # a partial cell names a rule that allows something


# ----- the repository's policies ----------------------------------------------------------------------------


def test_repository_matrix_agrees_with_explain(repo_set: PolicySet) -> None:
    matrix = access_matrix(repo_set)
    assert matrix.services == ("catalog", "gateway", "orders", "web")
    assert_agrees_with_explain(repo_set, matrix)


def test_repository_matrix_cells(repo_set: PolicySet) -> None:
    m = access_matrix(repo_set)
    # web-access: only the gateway may call web
    gw_web = m.cell("gateway", "web")
    assert (gw_web.verdict, gw_web.default, gw_web.audit) == ("allow", False, False)
    assert gw_web.rule == rule_at("- action: allow")  # web-access's only rule, the first of its kind
    for source in ("catalog", "orders", "web"):
        cell = m.cell(source, "web")
        assert (cell.verdict, cell.default, cell.rule) == ("deny", True, "default")
    # gateway has no policy: Mesh defaultAccess deny, marked default
    for source in m.services:
        cell = m.cell(source, "gateway")
        assert (cell.verdict, cell.default, cell.audit, cell.rule) == ("deny", True, False, "default")
        assert "Mesh default is deny" in cell.reason
        assert [(p.method, p.path) for p in cell.probes] == [("GET", "/")]
    # orders: web and gateway on /orders (partial: not GET /, not /admin), audit policy in shadow
    for source in ("web", "gateway"):
        cell = m.cell(source, "orders")
        assert (cell.verdict, cell.default, cell.audit) == ("partial", False, True)
        assert cell.rule == rule_at("- name: web-and-gateway")
        assert cell.example.path.startswith("/orders") and cell.example.decision.allowed
    admin = rule_at("- name: no-admin-from-mesh")
    for source in ("catalog", "orders"):
        cell = m.cell(source, "orders")
        assert (cell.verdict, cell.default, cell.audit) == ("deny", False, True)
        assert {p.decision.rule for p in cell.probes} == {"default", admin}
    # catalog: readers for web and orders, writes only from the gateway; GET / allowed to nobody
    readers = rule_at("- name: readers")
    for source in ("web", "orders", "gateway"):
        cell = m.cell(source, "catalog")
        assert (cell.verdict, cell.rule, cell.audit) == ("partial", readers, False)
    create = {(p.method, p.path): p for p in m.cell("gateway", "catalog").probes}[
        ("POST", "/demo.catalog.v1.Catalog/CreateProduct")
    ]
    assert create.decision.allowed and create.decision.rule == rule_at("- name: writes-from-the-edge")
    assert m.cell("catalog", "catalog").verdict == "deny" and m.cell("catalog", "catalog").default


# ----- small policy folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("default_access", ["allow", "deny"])
def test_a_target_without_policy_follows_the_mesh_default(tmp_path: Path, default_access: str) -> None:
    policies = load_set(
        tmp_path, policy("web-in", "web", "- action: allow\n  from: {services: [gateway]}"), default_access
    )
    m = access_matrix(policies)
    assert m.services == tuple(sorted(DEFAULT_SERVICES))
    for source in m.services:
        cell = m.cell(source, "orders")
        assert (cell.verdict, cell.default, cell.audit, cell.rule) == (default_access, True, False, "default")
        assert f"Mesh default is {default_access}" in cell.reason
    # a target with a policy: the implicit deny for everyone else, whatever the Mesh default
    implicit = m.cell("orders", "web")
    assert (implicit.verdict, implicit.default) == ("deny", True)
    assert (m.cell("gateway", "web").verdict, m.cell("gateway", "web").default) == ("allow", False)
    assert_agrees_with_explain(policies, m)


def test_deny_wins_over_allow(tmp_path: Path) -> None:
    text = policy(
        "orders-in",
        "orders",
        """
        - name: everyone
          action: allow
        - name: not-web
          action: deny
          from: {services: [web]}
        """,
    )
    policies = load_set(tmp_path, text, "allow")
    file = tmp_path / "policies.yaml"
    m = access_matrix(policies)
    web = m.cell("web", "orders")
    assert (web.verdict, web.default) == ("deny", False)
    assert web.rule == f"{file}:{line_of(file, '- name: not-web')}"
    assert web.reason == "deny by AccessPolicy/orders-in not-web"
    other = m.cell("catalog", "orders")
    assert (other.verdict, other.rule) == ("allow", f"{file}:{line_of(file, '- name: everyone')}")
    assert_agrees_with_explain(policies, m)


def test_path_and_method_restrictions_give_partial(tmp_path: Path) -> None:
    text = policy(
        "orders-in",
        "orders",
        """
        - name: api
          action: allow
          from: {services: [web]}
          to: {methods: [GET, POST], paths: ["/api/*", "*.json"]}
        - name: no-delete
          action: deny
          to: {methods: [DELETE]}
        """,
    )
    policies = load_set(tmp_path, text)
    file = tmp_path / "policies.yaml"
    m = access_matrix(policies)
    web = m.cell("web", "orders")
    assert (web.verdict, web.default, web.audit) == ("partial", False, False)
    assert web.rule == f"{file}:{line_of(file, '- name: api')}"
    decided = {(p.method, p.path): (p.decision.allowed, p.decision.rule) for p in web.probes}
    api, no_delete = (f"{file}:{line_of(file, '- name: ' + n)}" for n in ("api", "no-delete"))
    assert decided == {
        ("GET", "/"): (False, "default"),
        ("GET", "/api/x"): (True, api),
        ("GET", "/x.json"): (True, api),
        ("POST", "/api/x"): (True, api),
        ("POST", "/x.json"): (True, api),
        ("DELETE", "/"): (False, no_delete),
    }
    catalog = m.cell("catalog", "orders")
    assert (catalog.verdict, catalog.default) == ("deny", False)  # no-delete decided one probe
    assert_agrees_with_explain(policies, m)


def test_audit_marker_when_an_audit_policy_would_decide_otherwise(tmp_path: Path) -> None:
    text = policy("orders-in", "orders", "- action: allow\n  from: {services: [web, catalog]}") + policy(
        "orders-shadow",
        "orders",
        "- action: deny\n  from: {services: [web]}\n- action: allow\n  from: {services: [catalog, gateway]}",
        mode="audit",
    )
    policies = load_set(tmp_path, text)
    m = access_matrix(policies)
    web = m.cell("web", "orders")
    assert (web.verdict, web.audit) == ("allow", True)  # enforced allow, audit would deny
    catalog = m.cell("catalog", "orders")
    assert (catalog.verdict, catalog.audit) == ("allow", False)  # both allow
    gateway = m.cell("gateway", "orders")
    assert (gateway.verdict, gateway.default, gateway.audit) == ("deny", True, True)  # audit would allow
    billing = m.cell("billing", "orders")
    assert (billing.verdict, billing.audit) == ("deny", False)  # both deny
    assert not any(c.audit for (s, t), c in m.cells.items() if t != "orders")
    assert_agrees_with_explain(policies, m)


def test_audit_only_target_keeps_the_mesh_default_and_marks_the_difference(tmp_path: Path) -> None:
    text = policy("orders-shadow", "orders", "- action: allow\n  from: {services: [web]}", mode="audit")
    policies = load_set(tmp_path, text, "deny")
    m = access_matrix(policies)
    web = m.cell("web", "orders")
    assert (web.verdict, web.default, web.audit) == ("deny", True, True)
    assert (m.cell("catalog", "orders").verdict, m.cell("catalog", "orders").audit) == ("deny", False)
    assert_agrees_with_explain(policies, m)


def test_declared_namespaces_are_used_for_the_caller(tmp_path: Path) -> None:
    text = "---\napiVersion: meshgate/v1\nkind: Service\nname: ledger\nnamespace: finance\n" + policy(
        "orders-in", "orders", "- action: allow\n  from: {namespaces: [finance]}"
    )
    policies = load_set(tmp_path, text)
    m = access_matrix(policies)
    assert m.cell("ledger", "orders").verdict == "allow"
    assert m.cell("web", "orders").verdict == "deny"
    assert_agrees_with_explain(policies, m)


def test_not_paths_are_probed_too(tmp_path: Path) -> None:
    text = policy(
        "orders-in",
        "orders",
        """
        - action: deny
          from: {services: [web]}
          to: {notPaths: ["/public/*"]}
        - action: allow
        """,
    )
    policies = load_set(tmp_path, text)
    m = access_matrix(policies)
    answer = explain(policies, Question("web", "orders", path="/public/x"))
    assert answer.decision.allowed  # the engine lets web call /public/x
    assert m.cell("web", "orders").verdict == "partial"


def test_probes_name_every_method_and_path_once_and_are_capped(tmp_path: Path) -> None:
    text = policy(
        "orders-in",
        "orders",
        """
        - action: allow
          to: {methods: ["*"], paths: ["/a", "/b/*", "*.txt", "/c*"]}
        - action: allow
          to: {methods: [get], paths: ["/a"]}
        """,
    )
    policies = load_set(tmp_path, text)
    probes = probes_for(list(policies.access_policies))
    assert probes == [("GET", "/"), ("GET", "/a"), ("GET", "/b/x"), ("GET", "/x.txt"), ("GET", "/c")]
    many = policy(
        "catalog-in",
        "catalog",
        "- action: allow\n  to: {paths: [" + ", ".join(f'"/p{i}"' for i in range(40)) + "]}",
    )
    big = load_set(tmp_path / "big", many)
    capped = probes_for(list(big.access_policies))
    assert len(capped) == MAX_PROBES and capped[0] == ("GET", "/")
    m = access_matrix(big)
    assert len(m.cell("web", "catalog").probes) == MAX_PROBES
    assert m.cell("web", "catalog").verdict == "partial"


# ----- property: any small policy set -----------------------------------------------------------------------

SOURCES = st.one_of(
    st.none(),
    st.lists(st.sampled_from([*DEFAULT_SERVICES, "*", "ord*"]), min_size=1, max_size=3, unique=True),
)
METHODS = st.lists(st.sampled_from(["GET", "POST", "DELETE", "*"]), max_size=2, unique=True)
PATHS = st.lists(st.sampled_from(["/", "/api/*", "/admin", "*.json", "*", "/v1*"]), max_size=3, unique=True)


@st.composite
def rules(draw: st.DrawFn) -> str:
    action = draw(st.sampled_from(["allow", "deny"]))
    sources, methods, paths = draw(SOURCES), draw(METHODS), draw(PATHS)
    parts = [f"action: {action}"]
    if sources is not None:
        parts.append("from: {services: [" + ", ".join(f'"{s}"' for s in sources) + "]}")
    to = []
    if methods:
        to.append("methods: [" + ", ".join(f'"{m}"' for m in methods) + "]")
    if paths:
        to.append("paths: [" + ", ".join(f'"{p}"' for p in paths) + "]")
    if to:
        parts.append("to: {" + ", ".join(to) + "}")
    return "- {" + ", ".join(parts) + "}"


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    out = []
    for i in range(draw(st.integers(0, 4))):
        target = draw(st.sampled_from(DEFAULT_SERVICES))
        mode = draw(st.sampled_from(["enforce", "enforce", "audit"]))
        body = "\n".join(draw(st.lists(rules(), min_size=1, max_size=3)))
        out.append(policy(f"p{i}", target, body, mode))
    return "".join(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policy_texts(), default_access=st.sampled_from(["allow", "deny"]))
def test_any_policy_set_matrix_agrees_with_explain(text: str, default_access: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        policies = load_set(Path(folder), text, default_access)
        assert_agrees_with_explain(policies, access_matrix(policies))
