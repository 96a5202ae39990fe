"""Which program a request belongs to, and how program ids are namespaced per tenant.

Precedence follows the ThunderAgent wire contract: the body field ``program_id`` (what the
OpenAI SDK sends for ``extra_body={"program_id": ...}``), then the ``X-Program-Id`` header,
then ``metadata.program_id``. A request with none of them is an anonymous single-step
program: it still counts against capacity while it runs, and is released after its call.

An anonymous program's internal id starts with :data:`ANONYMOUS_MARK`, a control character
that :func:`validate_program_id` refuses in every client id, so no client can name a program
that the sidecar treats as anonymous (uncapped, unlisted, never stored). A client id such as
``anon-1`` is an ordinary named program. Callers see the mark-less form (``anon-<hex>``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

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
    """A program id is a non-empty printable string of bounded length."""
    if not isinstance(value, str):
        raise bad_request(f"{param} must be a string", param=param, code="invalid_type")
    if not value or len(value) > max_length:
        raise bad_request(
            f"{param} must be 1 to {max_length} characters long", param=param,
            code="invalid_length",
        )
    if not value.isprintable():
        raise bad_request(f"{param} must not contain control characters", param=param)
    return value


def extract_program_id(
    body: Mapping[str, Any], headers: Mapping[str, str], max_length: int = 256
) -> ProgramIdentity:
    """Apply the identity precedence; raise a 400 APIError for an id of the wrong shape."""
    if body.get("program_id") is not None:
        return ProgramIdentity(
            validate_program_id(body["program_id"], "program_id", max_length), "body"
        )
    header = headers.get(PROGRAM_ID_HEADER)
    if header:
        return ProgramIdentity(validate_program_id(header, "X-Program-Id", max_length), "header")
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
