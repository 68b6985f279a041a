"""Load a policy folder into one consistent :class:`PolicySet`, or every error found in it."""

from __future__ import annotations

import base64
import difflib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from shared.config.errors import PolicyError
from shared.config.model import KINDS, AccessPolicy, AuthProvider, Document, Mesh, RateLimit, Route, Service
from shared.config.policyset import Origin, PolicySet
from shared.config.yamlsource import FieldPath, RawDocument, dotted, find_policy_files, read_yaml_file


@dataclass(frozen=True)
class LoadResult:
    """What a load produced: a set when there were no errors, and the errors (sorted by file and line)."""

    policy_set: PolicySet | None
    errors: tuple[PolicyError, ...]
    files: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the folder is valid and ``policy_set`` is set."""
        return self.policy_set is not None and not self.errors


def _vocabulary() -> list[str]:
    words: set[str] = set()

    def visit(model: type[BaseModel]) -> None:
        for name, info in model.model_fields.items():
            words.add(info.alias or name)
            for arg in _model_args(info.annotation):
                if arg.__name__ not in seen:
                    seen.add(arg.__name__)
                    visit(arg)

    seen: set[str] = set()
    for cls in KINDS.values():
        visit(cls)
    return sorted(words)


def _model_args(annotation: Any) -> Iterable[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _model_args(arg)


_VOCABULARY = _vocabulary()
_YAML_BOOLEAN_WORDS = {"yes", "no", "on", "off", "y", "n", "true", "false"}


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _present_prefix(data: Any, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """Cut a pydantic location at the first part the input does not have (union branch tags)."""
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return loc[: i + 1], i == len(loc) - 1
    return loc, True


def validation_errors(raw: RawDocument, ref: str, exc: ValidationError) -> list[PolicyError]:
    """One :class:`PolicyError` per failing field of ``exc`` (pydantic), with the field's source line."""
    grouped: dict[tuple[Any, ...], list[str]] = {}
    for err in exc.errors(include_url=False):
        loc, exact = _present_prefix(raw.data, tuple(err["loc"]))
        if not exact:
            loc = loc[:-1]
        kind = err["type"]
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if kind == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}" + _suggest(str(loc[-1]), _VOCABULARY)
        elif kind == "missing":
            msg = "required field is missing"
        elif kind in ("literal_error", "enum"):
            msg = f"{msg}; got {err.get('input')!r}"
        elif kind == "string_type" and isinstance(err.get("input"), bool):
            msg += " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value)"
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            msg = f"{msg}; got {_show(err.get('input'))}"
        bucket = grouped.setdefault(loc, [])
        if msg not in bucket:
            bucket.append(msg)
    out = []
    for loc, msgs in grouped.items():
        path = cast(FieldPath, loc)
        message = msgs[0] if len(msgs) == 1 else "no accepted form matches: " + "; or ".join(msgs)
        out.append(PolicyError(raw.file, raw.line_of(path), ref, dotted(path), message))
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_document(raw: RawDocument) -> tuple[Document | None, list[PolicyError]]:
    data = raw.data
    if not isinstance(data, dict):
        what = type(data).__name__ if data is not None else "null"
        return None, [
            PolicyError(raw.file, raw.line, "", "", f"a policy document must be a mapping, got {what}")
        ]
    kind = data.get("kind")
    name = data.get("name")
    shown_name = name if isinstance(name, str) else "?"
    problems = [
        PolicyError(raw.file, line, f"{kind}/{shown_name}" if isinstance(kind, str) else "", dotted(p), m)
        for p, line, m in raw.problems
    ]
    if kind is None:
        return None, [*problems, PolicyError(raw.file, raw.line, "", "kind", "required field is missing")]
    if not isinstance(kind, str) or kind not in KINDS:
        return None, [
            *problems,
            PolicyError(
                raw.file,
                raw.line_of(("kind",)),
                "",
                "kind",
                f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}" + _suggest(str(kind), list(KINDS)),
            ),
        ]
    ref = f"{kind}/{shown_name}" if "name" in data or kind != "Mesh" else "Mesh/mesh"
    if data.get("apiVersion") not in (None, "meshgate/v1"):
        problems.append(
            PolicyError(
                raw.file,
                raw.line_of(("apiVersion",)),
                ref,
                "apiVersion",
                f"unsupported apiVersion {data.get('apiVersion')!r}; this release reads meshgate/v1",
            )
        )
        return None, problems
    try:
        doc = KINDS[kind].model_validate(data)
    except ValidationError as exc:
        return None, [*problems, *validation_errors(raw, ref, exc)]
    return (doc if not problems else None), problems


def _rule_lines(raw: RawDocument, doc: Document) -> tuple[int, ...]:
    if isinstance(doc, AccessPolicy):
        return tuple(raw.line_of(("rules", i)) for i in range(len(doc.rules)))
    return ()


def load_policy_set(paths: Sequence[str | Path]) -> LoadResult:
    """Read every YAML file under ``paths`` and validate them as one set.

    Never raises for bad input: unreadable files, invalid YAML and invalid documents are all
    returned as errors, and the set is ``None`` when there is any error.
    """
    errors: list[PolicyError] = []
    parsed: list[tuple[Document, RawDocument]] = []
    digest = hashlib.sha256()
    files: list[str] = []
    # "no Mesh" is reported only when it is certain: every file parsed and none declares kind Mesh
    # (an invalid Mesh gets its own errors; an unparseable file may hold the Mesh).
    mesh_may_exist = False
    for root in paths:
        found, problems = find_policy_files(Path(root))
        errors.extend(PolicyError(p.file, p.line, "", "", p.message) for p in problems)
        for file in found:
            display = str(file)
            files.append(display)
            docs, read_errors = read_yaml_file(file, display)
            errors.extend(PolicyError(e.file, e.line, "", "", e.message) for e in read_errors)
            mesh_may_exist = mesh_may_exist or bool(read_errors)
            for raw in docs:
                mesh_may_exist = mesh_may_exist or (
                    isinstance(raw.data, dict) and raw.data.get("kind") == "Mesh"
                )
                digest.update(display.encode() + b"\0" + repr(raw.data).encode() + b"\0")
                doc, doc_errors = _parse_document(raw)
                errors.extend(doc_errors)
                if doc is not None:
                    parsed.append((doc, raw))
    if not files and not errors:
        shown = ", ".join(str(p) for p in paths) or "(none)"
        errors.append(PolicyError(shown, 1, "", "", "no *.yaml or *.yml files found"))
    set_errors, policy_set = _assemble(parsed, files, digest.hexdigest()[:16], mesh_may_exist)
    errors.extend(set_errors)
    ordered = tuple(sorted(set(errors)))
    return LoadResult(policy_set if not ordered else None, ordered, tuple(files))


def _read_descriptor_set(folder: Path, name: str) -> tuple[bytes, str | None]:
    """The bytes of a protobuf FileDescriptorSet file (relative to the policy file), or a problem."""
    path = folder / name
    try:
        content = path.read_bytes()
    except OSError as exc:
        return b"", f"cannot read descriptor set {str(path)!r}: {exc.strerror or exc}"
    except ValueError as exc:  # e.g. a NUL in the name
        return b"", f"cannot read descriptor set {str(path)!r}: {exc}"
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    try:
        parsed = descriptor_pb2.FileDescriptorSet.FromString(content)
    except DecodeError as exc:
        return b"", f"{str(path)!r} is not a protobuf FileDescriptorSet: {exc}"
    if not any(f.service for f in parsed.file):
        return b"", f"{str(path)!r} declares no service (build it with protoc --descriptor_set_out)"
    return content, None


def _assemble(
    parsed: list[tuple[Document, RawDocument]], files: list[str], version: str, mesh_may_exist: bool = False
) -> tuple[list[PolicyError], PolicySet | None]:
    errors: list[PolicyError] = []
    origins: dict[tuple[str, str], Origin] = {}
    raws: dict[tuple[str, str], RawDocument] = {}
    by_kind: dict[str, dict[str, Document]] = {kind: {} for kind in KINDS}
    for doc, raw in parsed:
        key = (doc.KIND, doc.name)
        if key in origins:
            first = origins[key]
            errors.append(
                PolicyError(
                    raw.file,
                    raw.line,
                    doc.ref,
                    "name",
                    f"duplicate {doc.ref} (first defined at {first.at(first.line)})",
                )
            )
            continue
        origins[key] = Origin(raw.file, raw.line, _rule_lines(raw, doc))
        raws[key] = raw
        by_kind[doc.KIND][doc.name] = doc

    meshes = list(by_kind["Mesh"].values())
    if not meshes and files and not mesh_may_exist:  # no files: "no *.yaml files found" says it
        message = "no Mesh document in the set; add one with trustDomain"
        errors.append(PolicyError(files[0], 1, "", "", message))
    for extra in meshes[1:]:
        raw = raws[("Mesh", extra.name)]
        first = origins[("Mesh", meshes[0].name)]
        errors.append(
            PolicyError(
                raw.file, raw.line, extra.ref, "", f"only one Mesh per set (first at {first.at(first.line)})"
            )
        )

    services = cast(dict[str, Service], by_kind["Service"])
    routes = cast(dict[str, Route], by_kind["Route"])
    providers = cast(dict[str, AuthProvider], by_kind["AuthProvider"])
    limits = cast(dict[str, RateLimit], by_kind["RateLimit"])

    def missing(doc: Document, path: FieldPath, what: str, name: str, known: dict[str, Any]) -> None:
        raw = raws[(doc.KIND, doc.name)]
        errors.append(
            PolicyError(
                raw.file,
                raw.line_of(path),
                doc.ref,
                dotted(path),
                f"no {what} named {name!r} is declared" + _suggest(name, list(known)),
            )
        )

    policies = cast(dict[str, AccessPolicy], by_kind["AccessPolicy"])
    for policy in policies.values():
        if policy.target.service is not None and policy.target.service not in services:
            missing(policy, ("target", "service"), "Service", policy.target.service, services)
        if policy.target.route is not None and policy.target.route not in routes:
            missing(policy, ("target", "route"), "Route", policy.target.route, routes)
    for route in routes.values():
        for i, backend in enumerate(route.backends):
            if backend.service not in services:
                missing(route, ("backends", i, "service"), "Service", backend.service, services)
        if sum(b.weight for b in route.backends) == 0:
            raw = raws[("Route", route.name)]
            errors.append(
                PolicyError(raw.file, raw.line_of(("backends",)), route.ref, "backends", "all weights are 0")
            )
        for i, provider in enumerate(route.auth):
            if provider not in providers:
                missing(route, ("auth", i), "AuthProvider", provider, providers)
        if route.rate_limit is not None and route.rate_limit not in limits:
            missing(route, ("rateLimit",), "RateLimit", route.rate_limit, limits)
        if route.grpc_json is not None and route.grpc_json.descriptor is None:
            raw = raws[("Route", route.name)]
            content, problem = _read_descriptor_set(
                Path(raw.file).parent, route.grpc_json.descriptor_set or ""
            )
            if problem is not None:
                path = ("grpcJson", "descriptorSet")
                errors.append(PolicyError(raw.file, raw.line_of(path), route.ref, dotted(path), problem))
                continue
            embedded = route.grpc_json.model_copy(update={"descriptor": base64.b64encode(content).decode()})
            routes[route.name] = route.model_copy(update={"grpc_json": embedded})
            version = hashlib.sha256(f"{version}:{hashlib.sha256(content).hexdigest()}".encode()).hexdigest()[
                :16
            ]

    if errors or not meshes:
        return errors, None
    mesh = cast(Mesh, meshes[0])
    return [], PolicySet(
        mesh=mesh,
        services=MappingProxyType(services),
        access_policies=tuple(policies.values()),
        routes=MappingProxyType(routes),
        auth_providers=MappingProxyType(providers),
        rate_limits=MappingProxyType(limits),
        origins=MappingProxyType(origins),
        version=version,
    )
