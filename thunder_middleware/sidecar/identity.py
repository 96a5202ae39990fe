"""Which program a request belongs to, and how program ids are namespaced per tenant.

Precedence follows the ThunderAgent wire contract: the body field ``program_id`` (what the
OpenAI SDK sends for ``extra_body={"program_id": ...}``), then the ``X-Program-Id`` header,
then ``metadata.program_id``. A request with none of them is an anonymous single-step
program: it still counts against capacity while it runs, and is released after its call.

An anonymous program's internal id starts with :data:`ANONYMOUS_MARK`, a control character
that :func:`validate_program_id` refuses in every client id, so no client can name a program
that the sidecar treats as anonymous (uncapped, unlisted, never stored). A client id such as
``anon-1`` is an ordinary named program. Callers see the mark-less form (``anon-<hex>``).

One rule says what a program id is (:func:`validate_program_id`), whatever carries it: the
body, the ``X-Program-Id`` header (its bytes read as UTF-8, so a header names the same
program as the same id in a body), a path segment or a query parameter. Ids go back to the
client in the ``X-Program-Id`` answer header through :func:`header_value`, which cannot fail
whatever the id holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from thunder_middleware.sidecar.errors import bad_request

PROGRAM_ID_HEADER = "x-program-id"
ANONYMOUS_PREFIX = "anon-"  # the caller-visible id of an anonymous call: anon-<hex>
ANONYMOUS_MARK = "\x00"  # leads anonymous internal ids; client ids cannot hold it
NAMESPACE_SEPARATOR = "/"

IdentitySource = Literal["body", "header", "metadata", "anonymous"]


@dataclass(frozen=True, slots=True)
class ProgramIdentity:
    """The caller-visible id of a request's program and where it came from."""

    program_id: str
    source: IdentitySource

    @property
    def anonymous(self) -> bool:
        return self.source == "anonymous"

    @property
    def internal_id(self) -> str:
        """The id the sidecar keys the program by (see :func:`namespaced`)."""
        return ANONYMOUS_MARK + self.program_id if self.anonymous else self.program_id


def validate_program_id(value: Any, param: str, max_length: int) -> str:
    """THE rule of program ids: a string of 1 to ``max_length`` printable characters
    (Unicode ones included), not all whitespace. Every route that takes an id applies it."""
    if not isinstance(value, str):
        raise bad_request(f"{param} must be a string", param=param, code="invalid_type")
    if not value or len(value) > max_length:
        raise bad_request(
            f"{param} must be 1 to {max_length} characters long", param=param,
            code="invalid_length",
        )
    if not value.isprintable():
        raise bad_request(f"{param} must not contain control or separator characters "
                          "(other than the ASCII space)", param=param)
    if not value.strip():
        raise bad_request(f"{param} must not be blank", param=param)
    return value


def header_text(value: str) -> str:
    """A header value as the client wrote it: servers hand header bytes over as Latin-1,
    and UTF-8 bytes read that way would name a different program than the same id sent in
    a body. Bytes that are not UTF-8 keep their Latin-1 reading."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


#: printable ASCII that travels in a header value as it is; everything else (non-ASCII, %,
#: the space that header parsers trim) is percent-encoded as UTF-8
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_value(program_id: str) -> str:
    """``program_id`` as an answer header value: ASCII ids without ``%`` or spaces go as
    they are, any other is percent-encoded (UTF-8), so no id can make the answer fail."""
    return quote(program_id, safe=_HEADER_SAFE)


def extract_program_id(
    body: Mapping[str, Any], headers: Mapping[str, str], max_length: int = 256
) -> ProgramIdentity:
    """Apply the identity precedence; raise a 400 APIError for an id of the wrong shape."""
    if body.get("program_id") is not None:
        return ProgramIdentity(
            validate_program_id(body["program_id"], "program_id", max_length), "body"
        )
    header = headers.get(PROGRAM_ID_HEADER)
    if header is not None and header != "":
        return ProgramIdentity(
            validate_program_id(header_text(header), "X-Program-Id", max_length), "header")
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping) and metadata.get("program_id") is not None:
        value = validate_program_id(metadata["program_id"], "metadata.program_id", max_length)
        return ProgramIdentity(value, "metadata")
    return ProgramIdentity(ANONYMOUS_PREFIX + uuid.uuid4().hex, "anonymous")


def namespaced(tenant: str, program_id: str) -> str:
    """The internal key: tenants can never collide, whatever ids their clients choose."""
    return f"{tenant}{NAMESPACE_SEPARATOR}{program_id}"


def split_key(key: str) -> tuple[str, str]:
    """(tenant, caller-visible program id) of an internal key."""
    tenant, _, program_id = key.partition(NAMESPACE_SEPARATOR)
    return tenant, program_id


def is_anonymous_key(key: str) -> bool:
    """True only for keys the sidecar made for calls without a program id: the mark is a
    character no validated client id can contain."""
    return split_key(key)[1].startswith(ANONYMOUS_MARK)


def public_id(program_id: str) -> str:
    """The caller-visible form of a (possibly anonymous) internal program id."""
    return program_id.removeprefix(ANONYMOUS_MARK)
