"""JSON <-> gRPC transcoding from a descriptor set with ``google.api.http`` rules (as Envoy's
grpc_json_transcoder and grpc-gateway do).

- Path templates: literals, ``*`` (one segment), ``**`` (the rest), ``{field}`` and
  ``{field.path=pattern}`` variables, a ``:verb`` suffix; ``additional_bindings``.
- Request: ``body: "*"`` (the JSON body is the message), ``body: "field"`` (the JSON body is that
  field), no body (query parameters: ``a.b=1&c=x&c=y`` for nested and repeated fields). Path
  variables and query parameters are converted by the field's type; JSON uses the proto3 mapping
  (both lowerCamelCase and the proto names are accepted).
- Response: proto3 JSON (lowerCamelCase unless ``preserveProtoFieldNames``), ``response_body`` picks
  one field; gRPC errors become the mapped HTTP status with ``{"code", "message", "details"}``.
- Streaming: server-streamed messages are sent as newline-delimited JSON as they arrive; a client
  stream is read as newline-delimited JSON from the request body.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.api import annotations_pb2  # registers the google.api.http option
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message

#: gRPC status -> HTTP status (google.rpc.Code mapping, as in STANDARDS and grpc-gateway).
HTTP_STATUS = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}


class TranscodeError(Exception):
    """The client's request cannot become a gRPC message (HTTP 400, or ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Template:
    """One ``google.api.http`` path template, compiled to a regular expression."""

    def __init__(self, template: str) -> None:
        self.source = template
        verb = ""
        last_slash = template.rfind("/")
        colon = template.rfind(":")
        if colon > last_slash and "}" not in template[colon:]:
            template, verb = template[:colon], template[colon + 1 :]
        if not template.startswith("/"):
            raise ValueError(f"path template {self.source!r} must start with '/'")
        self.fields: list[str] = []
        body = template.replace("{", "/").replace("}", "/").replace("=", "/")
        wild = [seg for seg in body.split("/") if seg == "**"]
        if len(wild) > 1 or (wild and not template.rstrip("}").endswith("**")):
            # google.api.http allows ** only as the last segment; anything else would also compile to a
            # regular expression that backtracks on long paths
            raise ValueError(f"path template {self.source!r}: '**' may only be the last segment")
        pattern = "".join("/" + part for part in self._segments(template[1:]))
        self.regex = re.compile("^" + pattern + (":" + re.escape(verb) if verb else "") + "$")
        self.literals = len(re.findall(r"(?<![{=*])\b[\w.-]+", template))

    def _segments(self, text: str) -> Iterator[str]:
        i = 0
        while i <= len(text):
            if text.startswith("{", i):
                end = text.index("}", i)
                inner = text[i + 1 : end]
                name, _, sub = inner.partition("=")
                group = f"v{len(self.fields)}"
                self.fields.append(name)
                yield f"(?P<{group}>{'/'.join(self._segments(sub)) if sub else '[^/]+'})"
                i = end + 1
                if i < len(text) and text[i] == "/":
                    i += 1
                elif i >= len(text):
                    return
                continue
            end = text.find("/", i)
            segment = text[i:] if end < 0 else text[i:end]
            if segment == "*":
                yield "[^/]+"
            elif segment == "**":
                yield ".+"
            elif segment:
                yield re.escape(segment)
            if end < 0:
                return
            i = end + 1

    def match(self, path: str) -> dict[str, str] | None:
        found = self.regex.match(path)
        if found is None:
            return None
        return {name: unquote(found.group(f"v{i}")) for i, name in enumerate(self.fields)}


@dataclass(frozen=True)
class Binding:
    """One HTTP method and template bound to a gRPC method."""

    http_method: str
    template: _Template
    method: MethodDescriptor
    body: str
    response_body: str

    @property
    def grpc_path(self) -> str:
        """``/package.Service/Method``."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


def _rule_bindings(rule: Any, method: MethodDescriptor) -> Iterator[Binding]:
    kind = rule.WhichOneof("pattern")
    if kind is not None:
        if kind == "custom":
            http_method, path = rule.custom.kind.upper(), rule.custom.path
        else:
            http_method, path = kind.upper(), getattr(rule, kind)
        yield Binding(http_method, _Template(path), method, rule.body, rule.response_body)
    for extra in rule.additional_bindings:
        yield from _rule_bindings(extra, method)


class Transcoder:
    """The bindings of one descriptor set (the services named, or every service with HTTP rules)."""

    def __init__(
        self, descriptor_set: bytes, services: list[str] | None = None, *, preserve_names: bool = False
    ) -> None:
        try:
            files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        except DecodeError as exc:
            raise ValueError(f"not a FileDescriptorSet: {exc}") from exc
        self.pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            self.pool.Add(file)
        self.preserve_names = preserve_names
        self.bindings: list[Binding] = []
        wanted = set(services or ())
        for file in files.file:
            for service in file.service:
                full = f"{file.package}.{service.name}" if file.package else service.name
                if wanted and full not in wanted:
                    continue
                svc = self.pool.FindServiceByName(full)
                for method_proto in service.method:
                    if not method_proto.options.HasExtension(annotations_pb2.http):
                        continue
                    rule = method_proto.options.Extensions[annotations_pb2.http]
                    self.bindings.extend(_rule_bindings(rule, svc.methods_by_name[method_proto.name]))
        # most literal text first, so that /v1/shelves/{shelf}/books wins over /v1/{name=**}
        self.bindings.sort(key=lambda b: -b.template.literals)
        self._classes: dict[str, type[Message]] = {}

    def message_class(self, descriptor: Descriptor) -> type[Message]:
        """The dynamic message class of ``descriptor``."""
        cls = self._classes.get(descriptor.full_name)
        if cls is None:
            cls = message_factory.GetMessageClass(descriptor)
            self._classes[descriptor.full_name] = cls
        return cls

    def match(self, http_method: str, path: str) -> tuple[Binding, dict[str, str]] | None:
        """The binding for this request and its path variables, or None (paths over 8 KiB: None)."""
        if len(path) > 8192:
            return None
        for binding in self.bindings:
            if binding.http_method != http_method:
                continue
            found = binding.template.match(path)
            if found is not None:
                return binding, found
        return None

    # ----- request -------------------------------------------------------------------------------------

    def request_message(self, binding: Binding, variables: Mapping[str, str], query: str, body: Any) -> bytes:
        """The serialized request message (TranscodeError for what does not fit the message).

        ``body`` is the parsed JSON body (None when there is none)."""
        descriptor = binding.method.input_type
        data: dict[str, Any] = {}
        if binding.body == "*":
            if body is not None:
                if not isinstance(body, dict):
                    raise TranscodeError("the JSON body must be an object")
                data = body
        elif binding.body:
            if body is not None:
                _set_path(descriptor, data, binding.body.split("."), body, raw=True)
        bound = {binding.body} if binding.body and binding.body != "*" else set()
        for name, value in variables.items():
            _set_path(descriptor, data, name.split("."), value)
            bound.add(name)
        if binding.body != "*":
            for key, value in parse_qsl(query, keep_blank_values=True):
                if key in bound or any(key.startswith(b + ".") for b in bound):
                    continue
                _set_path(descriptor, data, key.split("."), value, repeat=True)
        message = self.message_class(descriptor)()
        try:
            json_format.ParseDict(data, message)
        except json_format.ParseError as exc:
            raise TranscodeError(f"the request does not fit {descriptor.full_name}: {exc}") from exc
        except RecursionError as exc:  # json_format stops at 100 levels; this is the stack's own limit
            raise TranscodeError(f"the request does not fit {descriptor.full_name}: nested too deep") from exc
        return bytes(message.SerializeToString())

    # ----- response ------------------------------------------------------------------------------------

    def response_json(self, binding: Binding, payload: bytes) -> Any:
        """One response message as JSON-ready data (``response_body`` applied)."""
        message = self.message_class(binding.method.output_type)()
        try:
            message.ParseFromString(payload)
        except DecodeError as exc:
            raise TranscodeError(
                f"the service answered something that is not a {message.DESCRIPTOR.full_name}", 502
            ) from exc
        data = json_format.MessageToDict(message, preserving_proto_field_name=self.preserve_names)
        if binding.response_body:
            field = binding.method.output_type.fields_by_name.get(binding.response_body)
            key = binding.response_body if self.preserve_names or field is None else field.json_name
            return data.get(key)
        return data


def _repeated(field: FieldDescriptor) -> bool:
    """protobuf 6+ has ``is_repeated``; older ones only ``label``."""
    flag = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor:
    field = descriptor.fields_by_name.get(name)
    if field is None:
        field = next((f for f in descriptor.fields if f.json_name == name), None)
    if field is None:
        raise TranscodeError(f"{descriptor.full_name} has no field {name!r}")
    return field


_INTS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
}
_INTS64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
#: An integer in a path or query string: ASCII digits only (Python's int() would also take ``1_000``,
#: `` 12 ``, ``+1`` and other scripts' digits, which proto3 JSON does not).
_INTEGER = re.compile(r"-?[0-9]+")
#: A number as proto3 JSON writes one (an integer field also takes an integral ``1e3`` or ``2.0``).
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: proto3 JSON's names for the special floating-point values.
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
#: Message types whose JSON form is a string (taken from a path or query string as it is).
_STRING_WKT = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    }
)
#: Wrapper types: JSON writes them as their ``value`` field, so a path or query string converts by
#: the rules of that field's type.
_WRAPPERS = frozenset(
    f"google.protobuf.{kind}Value"
    for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


def _scalar(field: FieldDescriptor, text: str, name: str | None = None) -> Any:
    """A path or query string as the JSON value the field's type takes (``name``: the field named in
    errors, for a wrapper's ``value``)."""
    name = name or field.name
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise TranscodeError(f"{name}: {text!r} is not a boolean")
    if field.type in _INTS or field.type in _INTS64:
        if _INTEGER.fullmatch(text):
            if field.type in _INTS64:
                return text  # proto3 JSON writes 64-bit integers as strings: no precision lost
            try:
                return int(text)
            except ValueError as exc:  # over Python's digit limit for int()
                raise TranscodeError(f"{name}: {text[:40]!r} is out of range") from exc
        if _NUMBER.fullmatch(text):
            return text  # ``1e3``: json_format takes it when integral and in range
        raise TranscodeError(f"{name}: {text[:40]!r} is not an integer")
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if text in _FLOAT_WORDS:
            return text
        if _NUMBER.fullmatch(text):
            return float(text)
        raise TranscodeError(f"{name}: {text[:40]!r} is not a number")
    if field.type == FieldDescriptor.TYPE_ENUM:
        if text in field.enum_type.values_by_name or _INTEGER.fullmatch(text):
            return text
        raise TranscodeError(f"{name}: {text[:40]!r} is not a value of {field.enum_type.full_name}")
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        kind = field.message_type.full_name
        if kind in _WRAPPERS:
            return _scalar(field.message_type.fields_by_name["value"], text, name)
        if kind not in _STRING_WKT:
            raise TranscodeError(f"{name}: a message cannot come from a path or query string")
    return text  # strings, bytes (base64), well-known types written as strings


#: The deepest field path a path or query string may name (json_format's own nesting limit).
_MAX_DEPTH = 100


def _set_path(
    descriptor: Descriptor,
    data: dict[str, Any],
    path: list[str],
    value: Any,
    *,
    raw: bool = False,
    repeat: bool = False,
) -> None:
    """Put ``value`` at the dotted field ``path`` of ``data`` (converted unless ``raw``). A loop, not
    recursion: a query key may name a recursive message thousands of levels deep."""
    shown = ".".join(path)
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    if len(path) > _MAX_DEPTH:
        raise TranscodeError(f"{shown}: nested over {_MAX_DEPTH} levels")
    for name in path[:-1]:
        field = _field(descriptor, name)
        if field.type != FieldDescriptor.TYPE_MESSAGE or _repeated(field):
            raise TranscodeError(f"{shown}: {field.name} is not a message")
        inner = data.setdefault(field.name, {})
        if not isinstance(inner, dict):
            raise TranscodeError(f"{shown}: given twice")
        descriptor, data = field.message_type, inner
    field = _field(descriptor, path[-1])
    key = field.name
    converted = value if raw else _scalar(field, value)
    if _repeated(field) and not raw:
        data.setdefault(key, []).append(converted)
    elif repeat and key in data:
        raise TranscodeError(f"{field.name} given more than once")
    else:
        data[key] = converted


# ----- gRPC framing --------------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """One uncompressed gRPC message."""
    return struct.pack(">BI", 0, len(payload)) + payload


async def frames(body: AsyncIterator[bytes], limit: int = 16 * 1024 * 1024) -> AsyncIterator[bytes]:
    """The messages of a gRPC body as they complete (TranscodeError for compressed or oversized ones)."""
    buffer = b""
    async for chunk in body:
        buffer += chunk
        while len(buffer) >= 5:
            flag, size = struct.unpack(">BI", buffer[:5])
            if flag & 1:
                raise TranscodeError("the service sent a compressed message", 502)
            if size > limit:
                raise TranscodeError("the service sent a message over 16 MiB", 502)
            if len(buffer) < 5 + size:
                break
            yield buffer[5 : 5 + size]
            buffer = buffer[5 + size :]
    if buffer:
        raise TranscodeError("the service's response ended mid message", 502)


def error_body(code: int, message: str, details_bin: str | None = None) -> bytes:
    """The JSON error body for a gRPC status (grpc-gateway's shape)."""
    details: list[Any] = []
    if details_bin:
        try:
            from google.rpc import status_pb2

            padded = details_bin + "=" * (-len(details_bin) % 4)
            status = status_pb2.Status.FromString(base64.b64decode(padded))
            details = [
                {"@type": d.type_url, "value": base64.b64encode(d.value).decode()} for d in status.details
            ]
        except Exception:  # details are a courtesy: a bad blob is dropped, the status stands
            details = []
    return json.dumps({"code": code, "message": message, "details": details}).encode()
