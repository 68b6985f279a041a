"""Route checks that used to pass ``meshgate policy check`` and fail only at runtime: header operations
(values and names), hosts, backend weights, path templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from config_testlib import MESH, assert_error, line_of, load, only_error, write
from pydantic import ValidationError

from shared.config.model.edge import HeaderOps, Route

ORDERS = "apiVersion: meshgate/v1\nkind: Service\nname: orders\n"


def route_yaml(extra: str) -> str:
    return (
        MESH
        + "---\n"
        + ORDERS
        + "---\napiVersion: meshgate/v1\nkind: Route\nname: r\nbackends: [{service: orders}]\n"
        + extra
    )


def route(**spec: Any) -> Route:
    spec.setdefault("backends", [{"service": "orders"}])
    return Route.model_validate({"apiVersion": "meshgate/v1", "kind": "Route", "name": "r", **spec})


def refusal(**spec: Any) -> str:
    with pytest.raises(ValidationError) as info:
        route(**spec)
    return str(info.value)


# ----- header operations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("v\r\nx-injected: 1", ["CR"]),
        ("v\nset-cookie: evil=1", ["LF"]),
        ("a\x00b", ["NUL"]),
        ("a\x01b", ["U+0001", "control character"]),
        ("a\x7fb", ["U+007F"]),
        ("caf\u20ac", ["U+20AC", "latin-1"]),
        (" padded", ["white space"]),
        ("padded\t", ["white space"]),
    ],
)
@pytest.mark.parametrize("ops", ["requestHeaders", "responseHeaders"])
def test_header_values_that_http_cannot_carry_are_refused(ops: str, value: str, words: list[str]) -> None:
    message = refusal(**{ops: {"set": {"x-a": value}}})
    assert "header 'x-a'" in message
    for word in words:
        assert word in message


def test_only_header_values_http_cannot_carry_are_refused() -> None:
    good = ["", "1", "a b\tc", "caf\xe9", 'say "hi"; q=0.5, */*', "~!#$%&'*+-.^_`|"]
    for value in good:
        assert route(requestHeaders={"set": {"x-a": value}}).request_headers.set == {"x-a": value}
    for value in ["v\r\nx: 1", "v\n", "\x00", "\x1b[31m", "\u2028"]:
        with pytest.raises(ValidationError):
            route(requestHeaders={"set": {"x-a": value}})


def test_a_crlf_header_value_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", route_yaml('requestHeaders: {set: {x-a: "v\\r\\nx-injected: 1"}}\n'))
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "requestHeaders"), "Route/r", "requestHeaders.set", "x-a", "CR (\\r)")


@pytest.mark.parametrize("op", ["set", "remove"])
def test_invalid_header_names_are_refused(op: str) -> None:
    # "x-a\n" passed the HeaderName type (its pattern ends in $, which matches before a final newline)
    for name in ["x-a\n", "x-a\r\n", "x a", "x:a", ":path", "", "x-\u00e9"]:
        spec: dict[str, Any] = {"set": {name: "1"}} if op == "set" else {"remove": [name]}
        with pytest.raises(ValidationError, match="invalid header name"):
            HeaderOps.model_validate(spec)


@pytest.mark.parametrize(
    "name",
    ["connection", "Transfer-Encoding", "te", "upgrade", "keep-alive", "proxy-connection", "content-length"],
)
def test_connection_and_framing_headers_cannot_be_set(name: str) -> None:
    message = refusal(responseHeaders={"set": {name: "upgrade"}})
    assert f"header {name.lower()!r} cannot be set" in message
    assert route(responseHeaders={"remove": [name]}).response_headers.remove == [name.lower()]


def test_connection_close_may_be_set_the_server_closes_after_the_answer() -> None:
    assert route(responseHeaders={"set": {"Connection": "close"}}).response_headers.set


# ----- hosts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("api.example.com:8443", ["has a port", "'api.example.com'"]),
        ("[::1]:8443", ["has a port", "'[::1]'"]),
        ("*example.org", ["wildcard", "did you mean '*.example.org'?"]),
        ("a.*.com", ["wildcard"]),
        ("*.*.example.com", ["wildcard"]),
        ("api.*", ["wildcard"]),
        ("bücher.example", ["not ASCII", "punycode", "'xn--bcher-kva.example'"]),
        ("a..b", ["empty label"]),
        (".example.org", ["empty label"]),
        ("-a.example.org", ["label '-a'"]),
        ("a b.example", ["label 'a b'"]),
        ("a/b", ["label 'a/b'"]),
        ("*.", ["names no host"]),
        ("", ["names no host"]),
        ("x" * 64 + ".example", ["label"]),
        ("::1", ["IPv6", "brackets"]),
        ("[not-v6]", ["IPv6"]),
    ],
)
def test_bad_hosts_are_refused_with_a_reason(host: str, words: list[str]) -> None:
    message = refusal(hosts=[host])
    for word in words:
        assert word in message, message


def test_good_hosts_are_kept_in_lower_case_without_a_trailing_dot() -> None:
    cases = {
        "*": "*",
        "api.example.com": "api.example.com",
        "API.Example.COM": "api.example.com",
        "api.example.com.": "api.example.com",
        "*.Example.org.": "*.example.org",
        "xn--bcher-kva.example": "xn--bcher-kva.example",
        "localhost": "localhost",
        "10.0.0.1": "10.0.0.1",
        "[2001:DB8::1]": "[2001:db8::1]",
        "[2001:db8:0:0::1]": "[2001:db8:0:0::1]",  # as written: requests are matched by their text
        "[::ffff:192.0.2.1]": "[::ffff:192.0.2.1]",
        "my_host.internal": "my_host.internal",
    }
    assert {host: route(hosts=[host]).hosts for host in cases} == {host: [n] for host, n in cases.items()}


def test_hosts_equal_after_normalizing_are_listed_once() -> None:
    assert route(hosts=["API.example.com", "api.example.com.", "*"]).hosts == ["api.example.com", "*"]


def test_a_host_with_a_port_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", route_yaml('hosts: ["api.example.com:8443"]\n'))
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "hosts:"), "Route/r", "hosts", "has a port", "write 'api.example.com'")


# ----- backend weights -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backends",
    [
        [{"service": "orders", "weight": 0}],
        [{"service": "orders", "weight": 0}, {"service": "billing", "weight": 0}],
    ],
)
def test_backends_all_of_weight_zero_are_refused(backends: list[dict[str, Any]]) -> None:
    assert "every backend has weight 0" in refusal(backends=backends)


def test_only_a_total_weight_of_zero_is_refused() -> None:
    backends = [{"service": "orders", "weight": 0}, {"service": "billing", "weight": 1}]
    assert [b.weight for b in route(backends=backends).backends] == [0, 1]  # a canary switched off
    with pytest.raises(ValidationError, match="every backend has weight 0"):
        route(backends=[{**b, "weight": 0} for b in backends])


def test_weights_of_zero_are_refused_at_load(tmp_path: Path) -> None:
    text = route_yaml("").replace("backends: [{service: orders}]", "backends: [{service: orders, weight: 0}]")
    f = write(tmp_path, "p.yaml", text)
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "backends:"), "Route/r", "backends", "weight 0")


# ----- path templates ------------------------------------------------------------------------------


def test_a_template_the_gateway_cannot_compile_is_refused_at_load(tmp_path: Path) -> None:
    f = write(tmp_path, "p.yaml", route_yaml('match: {path: {template: "/files/{p=**}/x"}}\n'))
    err = only_error(tmp_path)
    assert_error(err, f, line_of(f, "match:"), "Route/r", "match.path", "{p=**}", "must be the last segment")
    write(tmp_path, "p.yaml", route_yaml('match: {path: {template: "/files/{p=**}"}}\n'))
    assert load(tmp_path).ok
