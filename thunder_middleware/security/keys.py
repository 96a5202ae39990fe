"""API keys, stored only as salted scrypt hashes, checked in constant time.

Why scrypt: a leaked config file must not hand out working keys, and scrypt makes guessing
a key from its hash expensive in memory as well as CPU. Why a verified-key cache: one scrypt
costs tens of milliseconds, far too much on every proxied call; after a key has been checked
once, its SHA-256 digest (never the key) maps straight to its tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

SCHEME = "scrypt"
# n=2**14, r=8 needs 16 MiB per check: OWASP's minimum for scrypt, still ~30 ms on a laptop
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
KEY_BYTES = 32
KEY_PREFIX = "tm-"
MAX_KEY_LENGTH = 512


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> str:
    """A fresh random API key (256 bits of entropy)."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def _scrypt(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2,
                          dklen=32)


def hash_key(key: str, *, salt: bytes | None = None) -> str:
    """The at-rest form of ``key``: ``scrypt$n$r$p$salt$digest`` (urlsafe base64)."""
    if not key:
        raise ValueError("an API key must not be empty")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(key, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_key(key: str, hashed: str) -> bool:
    """Whether ``key`` matches ``hashed``; the final comparison is constant-time."""
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != SCHEME:
            return False
        computed = _scrypt(key, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(computed, _unb64(digest))
    except (ValueError, TypeError):
        return False


def check_hash_format(hashed: str) -> str:
    """Refuse, at start-up, a configured key that is not a hash (a plain key pasted in)."""
    parts = hashed.split("$")
    if len(parts) != 6 or parts[0] != SCHEME or not all(parts[1:]):
        raise ValueError("API keys are configured as hashes: run `thunder-middleware keys hash`"
                         " and paste its output (scrypt$n$r$p$salt$digest)")
    return hashed


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One configured key hash and the tenant it authenticates."""

    tenant: str
    hashed: str


class KeyRing:
    """Maps a presented key to its tenant, remembering keys already verified.

    Both caches hold SHA-256 digests of keys, so the process memory never keeps a raw key;
    the negative cache is bounded so that a flood of wrong keys costs one scrypt each at
    most and cannot grow memory.
    """

    def __init__(self, entries: Iterable[KeyEntry], cache_size: int = 4096) -> None:
        self.entries = list(entries)
        self._known: OrderedDict[bytes, str | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # tenant_of runs in worker threads

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def cached(self, key: str) -> bool:
        """Whether ``key`` was checked before (answering it costs no scrypt)."""
        with self._lock:
            return hashlib.sha256(key.encode()).digest() in self._known

    def tenant_of(self, key: str) -> str | None:
        """The tenant ``key`` belongs to, or None when it matches no configured hash."""
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        fingerprint = hashlib.sha256(key.encode()).digest()
        with self._lock:
            if fingerprint in self._known:
                self._known.move_to_end(fingerprint)
                return self._known[fingerprint]
        tenant = next((entry.tenant for entry in self.entries
                       if verify_key(key, entry.hashed)), None)
        with self._lock:
            self._known[fingerprint] = tenant
            while len(self._known) > self._cache_size:
                self._known.popitem(last=False)
        return tenant
