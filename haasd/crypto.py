"""Sealing tokens at rest: AES-256-GCM with key ids and associated data.

A sealed value ("blob") is laid out as::

    version (1 byte, 0x01) | key id (8 bytes) | nonce (12 bytes) | ciphertext + tag (16)

The associated data binds the blob to its place: version, key id, human id, column name
and any :class:`RowValues` the caller names (the store binds a grant row's scope,
state and expiries: :mod:`haasd.store.schema`), each length-prefixed, so a ciphertext
copied to another row or column, or left under an edited row, does not open. A sequence
of length-prefixed items splits one way only, so no two places share associated data;
with no ``bound`` row values it is exactly the associated data of haasd's first
stores. The key id travels in the clear so that a store can hold blobs sealed by older
keys while keys rotate.

Pure apart from :func:`os.urandom`; nothing here touches a file.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Iterable
from typing import Final, NoReturn, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from haasd.errors import DecryptError
from haasd.secret import Secret

__all__ = [
    "BLOB_VERSION",
    "KEY_TEXT_PREFIX",
    "Key",
    "RowValues",
    "Sealer",
    "fingerprint",
    "sealed_key_id",
]

#: The key-file format: this prefix, then the 32 key bytes in urlsafe base64.
KEY_TEXT_PREFIX: Final = "haasd-key-v1:"
#: The first byte of every blob this module writes.
BLOB_VERSION: Final = 0x01

_KEY_BYTES: Final = 32
_KEY_ID_DOMAIN: Final = b"haasd-key-id\0"
_KEY_ID_BYTES: Final = 8
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_HEADER: Final = struct.Struct(f">B{_KEY_ID_BYTES}s{_NONCE_BYTES}s")
_LENGTH: Final = struct.Struct(">I")
_VERSION_BYTE: Final = bytes((BLOB_VERSION,))
_URLSAFE_B64: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")


@final
class Key:
    """A 256-bit AES key. Its ``repr`` shows only the key id, never the key."""

    __slots__ = ("_key_id", "_material")

    def __init__(self, material: bytes) -> None:
        if len(material) != _KEY_BYTES:
            raise ValueError(f"a key is {_KEY_BYTES} bytes (256 bits)")
        self._material = bytes(material)
        self._key_id = hashlib.sha256(_KEY_ID_DOMAIN + self._material).hexdigest()[
            : 2 * _KEY_ID_BYTES
        ]

    @classmethod
    def generate(cls) -> Key:
        """A fresh random key."""
        return cls(os.urandom(_KEY_BYTES))

    @classmethod
    def from_text(cls, text: str) -> Key:
        """Parse the key-file format (``haasd-key-v1:<base64>``), ignoring outer whitespace.

        Raises :class:`ValueError` saying what is wrong; the message never repeats the text.
        """
        line = text.strip()
        if not line.startswith(KEY_TEXT_PREFIX):
            raise ValueError(f"key text must be one line starting with {KEY_TEXT_PREFIX!r}")
        encoded = line.removeprefix(KEY_TEXT_PREFIX)
        if not _URLSAFE_B64.fullmatch(encoded):
            raise ValueError("key text is not valid urlsafe base64 (one line, no spaces)")
        try:
            material = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except binascii.Error as exc:
            raise ValueError("key text is not valid urlsafe base64 (bad padding)") from exc
        if len(material) != _KEY_BYTES:
            raise ValueError(
                f"key text decodes to {len(material)} bytes; a key is {_KEY_BYTES} bytes"
            )
        return cls(material)

    def to_text(self) -> str:
        """The key-file line (without a newline). Reveals the key: write it to a 0600 file."""
        return KEY_TEXT_PREFIX + base64.urlsafe_b64encode(self._material).decode("ascii")

    @property
    def key_id(self) -> str:
        """16 hex characters naming this key; safe to show and log."""
        return self._key_id

    def reveal(self) -> bytes:
        """The key's 32 bytes, for the cipher. Reveals the key: keep the result local."""
        return self._material

    def __repr__(self) -> str:
        return f"Key(key_id={self._key_id!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return hash((Key, self._key_id))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Key cannot be pickled")


@final
class RowValues:
    """Values of its row a blob is bound to beyond its place (human id and column), in
    this order: text (as UTF-8) or bytes (as they are), each length-prefixed like the
    place. Encoded once, so that the blobs of one row share the work."""

    __slots__ = ("_data",)

    def __init__(self, *values: str | bytes) -> None:
        data = bytearray()
        for value in values:
            item = value.encode("utf-8") if isinstance(value, str) else value
            data += _LENGTH.pack(len(item))
            data += item
        self._data = bytes(data)

    @classmethod
    def of_encoded(cls, data: bytes) -> RowValues:
        """Values encoded already as :meth:`__init__` would (a caller with a faster way
        for values of known types; see :func:`haasd.store.schema.grant_bound`)."""
        values: RowValues = object.__new__(cls)
        values._data = data
        return values

    @property
    def encoded(self) -> bytes:
        """The values, length-prefixed, as a blob's associated data ends with them."""
        return self._data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowValues) and self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"RowValues({len(self._data)} bytes)"


@final
class Sealer:
    """Seals with the current key; opens blobs sealed by the current or any older key.

    One :class:`AESGCM` object per key, built once.
    """

    __slots__ = ("_aeads", "_current_id", "_key_ids")

    def __init__(self, current: Key, older: Iterable[Key] = ()) -> None:
        self._aeads: dict[bytes, AESGCM] = {}
        keys = [current, *older]
        for key in keys:
            raw_id = bytes.fromhex(key.key_id)
            if raw_id in self._aeads:
                raise ValueError(f"key {key.key_id} given more than once")
            self._aeads[raw_id] = AESGCM(key.reveal())
        self._current_id = bytes.fromhex(current.key_id)
        self._key_ids = tuple(key.key_id for key in keys)

    @property
    def current_key_id(self) -> str:
        """The id of the key new blobs are sealed with."""
        return self._current_id.hex()

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this sealer can open, the current one first."""
        return self._key_ids

    def seal(
        self, plaintext: str, *, human_id: str, column: str, bound: RowValues | None = None
    ) -> bytes:
        """Encrypt ``plaintext`` for this human's column, under a fresh random nonce.

        ``bound``: further values the blob opens only beside (see :meth:`open`).
        """
        nonce = os.urandom(_NONCE_BYTES)
        aad = _associated_data(self._current_id, human_id, column, bound)
        sealed = self._aeads[self._current_id].encrypt(nonce, plaintext.encode("utf-8"), aad)
        return _HEADER.pack(BLOB_VERSION, self._current_id, nonce) + sealed

    def open(
        self, blob: bytes, *, human_id: str, column: str, bound: RowValues | None = None
    ) -> str:
        """Decrypt a blob sealed for this human's column with these ``bound`` values, or
        raise :class:`DecryptError`."""
        tail = b"" if bound is None else bound.encoded
        return self._open(blob, human_id, column, _place(human_id), tail)

    def open_pair(
        self,
        first: bytes,
        second: bytes,
        *,
        human_id: str,
        columns: tuple[str, str],
        bound: RowValues | None = None,
    ) -> tuple[str, str]:
        """:meth:`open` of two blobs of one row (a grant's two tokens), with the parts of
        the associated data they share built once: loading 100,000 grants is mostly this."""
        place, tail = _place(human_id), b"" if bound is None else bound.encoded
        return (
            self._open(first, human_id, columns[0], place, tail),
            self._open(second, human_id, columns[1], place, tail),
        )

    def _open(self, blob: bytes, human_id: str, column: str, place: bytes, tail: bytes) -> str:
        if len(blob) < _HEADER.size + _TAG_BYTES:
            _fail(human_id, column, "the value is truncated")
        version, raw_id, nonce = _HEADER.unpack_from(blob)
        if version != BLOB_VERSION:
            _fail(human_id, column, f"unknown format version {version}")
        aead = self._aeads.get(raw_id)
        if aead is None:
            _fail(human_id, column, f"it was sealed with key {raw_id.hex()}, which is not loaded")
        aad = b"".join((_VERSION_BYTE, raw_id, place, _column(column), tail))
        try:
            plaintext = aead.decrypt(nonce, blob[_HEADER.size :], aad)
            return plaintext.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError) as exc:
            _fail(human_id, column, "it was tampered with or belongs to another row or column", exc)

    def __repr__(self) -> str:
        return f"Sealer(key_ids={self._key_ids!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Sealer cannot be pickled")


def sealed_key_id(blob: bytes) -> str | None:
    """The key id a blob names (without opening it), or None if it is not a blob."""
    if len(blob) < _HEADER.size or blob[0] != BLOB_VERSION:
        return None
    return blob[1 : 1 + _KEY_ID_BYTES].hex()


def fingerprint(token: str | Secret) -> str:
    """A short, stable, one-way name for a token (12 hex chars), for logs and intents."""
    value = token.reveal() if isinstance(token, Secret) else token
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def _associated_data(raw_id: bytes, human_id: str, column: str, bound: RowValues | None) -> bytes:
    tail = b"" if bound is None else bound.encoded
    return b"".join((_VERSION_BYTE, raw_id, _place(human_id), _column(column), tail))


def _place(human_id: str) -> bytes:
    """The human id as the associated data holds it: length-prefixed UTF-8."""
    human = human_id.encode("utf-8")
    return _LENGTH.pack(len(human)) + human


@functools.cache
def _column(column: str) -> bytes:
    """A column name as the associated data holds it (a handful of names: cached)."""
    col = column.encode("utf-8")
    return _LENGTH.pack(len(col)) + col


def _fail(human_id: str, column: str, reason: str, cause: Exception | None = None) -> NoReturn:
    raise DecryptError(f"cannot open {column} of human {human_id!r}: {reason}") from cause
