"""Sealing at rest: key format, AES-GCM blobs bound to their row and column."""

from __future__ import annotations

import base64
import hashlib
import pickle

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import haasd.crypto
from haasd.crypto import (
    BLOB_VERSION,
    KEY_TEXT_PREFIX,
    Key,
    RowValues,
    Sealer,
    fingerprint,
    sealed_key_id,
)
from haasd.errors import DecryptError
from haasd.secret import Secret

TOKEN = "haas_at_" + "q" * 40
MATERIAL = bytes(range(32))


def test_public_names_are_sorted_and_exist() -> None:
    assert sorted(haasd.crypto.__all__) == haasd.crypto.__all__
    for name in haasd.crypto.__all__:
        assert hasattr(haasd.crypto, name)


# -- Key ---------------------------------------------------------------------------------


def test_generated_keys_are_256_bit_and_distinct() -> None:
    a, b = Key.generate(), Key.generate()
    assert a != b
    assert a.key_id != b.key_id
    assert len(base64.urlsafe_b64decode(a.to_text().removeprefix(KEY_TEXT_PREFIX))) == 32


def test_key_id_is_the_documented_hash_prefix() -> None:
    expected = hashlib.sha256(b"haasd-key-id\0" + MATERIAL).hexdigest()[:16]
    assert expected == Key(MATERIAL).key_id


def test_key_text_round_trips() -> None:
    key = Key.generate()
    text = key.to_text()
    assert text.startswith("haasd-key-v1:")
    assert "\n" not in text
    assert key == Key.from_text(text)
    assert key.key_id == Key.from_text(text).key_id


def test_key_text_tolerates_surrounding_whitespace_and_missing_padding() -> None:
    key = Key(MATERIAL)
    assert key == Key.from_text(f"  {key.to_text()}\n")
    assert key == Key.from_text(key.to_text().rstrip("="))


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "must be one line starting with 'haasd-key-v1:'"),
        (base64.urlsafe_b64encode(MATERIAL).decode(), "starting with 'haasd-key-v1:'"),
        ("haasd-key-v2:" + base64.urlsafe_b64encode(MATERIAL).decode(), "starting with"),
        ("haasd-key-v1:" + base64.b64encode(b"\xfb" * 32).decode(), "not valid urlsafe base64"),
        ("haasd-key-v1:AAAA AAAA", "not valid urlsafe base64"),
        ("haasd-key-v1:" + base64.urlsafe_b64encode(b"k" * 16).decode(), "16 bytes"),
        ("haasd-key-v1:" + base64.urlsafe_b64encode(b"k" * 33).decode(), "33 bytes"),
        ("haasd-key-v1:ÄÖÜ", "not valid urlsafe base64"),
        ("haasd-key-v1:A", "bad padding"),
    ],
)
def test_malformed_key_text_is_refused_without_echoing_it(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match="key") as info:
        Key.from_text(text)
    message = str(info.value)
    assert complaint in message
    payload = text.removeprefix("haasd-key-v1:")
    if len(payload) > 4:
        assert payload not in message


def test_two_line_key_text_is_refused() -> None:
    text = Key(MATERIAL).to_text()
    with pytest.raises(ValueError, match="base64"):
        Key.from_text(text[:20] + "\n" + text[20:])


def test_key_of_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Key(b"short")


def test_key_repr_shows_only_its_id() -> None:
    key = Key(MATERIAL)
    shown = repr(key) + str(key) + f"{key}"
    assert f"Key(key_id={key.key_id!r})" == repr(key)
    assert key.to_text().removeprefix(KEY_TEXT_PREFIX) not in shown
    assert MATERIAL.hex() not in shown
    assert repr(MATERIAL) not in shown


def test_keys_and_sealers_refuse_pickling() -> None:
    key = Key(MATERIAL)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Sealer(key))


def test_key_has_no_instance_dict() -> None:
    assert not hasattr(Key(MATERIAL), "__dict__")


def test_keys_hash_by_identity_of_material() -> None:
    assert {Key(MATERIAL), Key(MATERIAL)} == {Key(MATERIAL)}
    assert Key(MATERIAL) != MATERIAL


# -- Sealer ------------------------------------------------------------------------------


def test_seal_then_open_returns_the_plaintext() -> None:
    sealer = Sealer(Key.generate())
    for text in (TOKEN, "", "ünïcødé ✓"):
        blob = sealer.seal(text, human_id="usr_1", column="access_token")
        assert text == sealer.open(blob, human_id="usr_1", column="access_token")


def test_blob_layout_is_version_key_id_nonce_ciphertext_tag() -> None:
    key = Key(MATERIAL)
    blob = Sealer(key).seal(TOKEN, human_id="usr_1", column="access_token")
    assert blob[0] == BLOB_VERSION
    assert bytes.fromhex(key.key_id) == blob[1:9]
    assert 1 + 8 + 12 + len(TOKEN) + 16 == len(blob)
    assert TOKEN.encode() not in blob
    assert key.key_id == sealed_key_id(blob)


def test_every_seal_uses_a_fresh_nonce() -> None:
    sealer = Sealer(Key.generate())
    blobs = {sealer.seal(TOKEN, human_id="usr_1", column="access_token") for _ in range(100)}
    assert len(blobs) == 100
    assert len({blob[9:21] for blob in blobs}) == 100


@pytest.mark.parametrize(
    ("human_id", "column"),
    [
        ("usr_2", "access_token"),  # another row
        ("usr_1", "refresh_token"),  # another column
        ("usr_1a", "ccess_token"),  # the same bytes, split differently
        ("", "usr_1access_token"),
    ],
)
def test_blob_moved_to_another_row_or_column_does_not_open(human_id: str, column: str) -> None:
    sealer = Sealer(Key.generate())
    blob = sealer.seal(TOKEN, human_id="usr_1", column="access_token")
    with pytest.raises(DecryptError, match="tampered with or belongs to another row") as info:
        sealer.open(blob, human_id=human_id, column=column)
    assert column in str(info.value)
    assert repr(human_id) in str(info.value)
    assert TOKEN not in str(info.value)
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("position", [0, 1, 9, 21, -1])
def test_any_flipped_byte_fails(position: int) -> None:
    sealer = Sealer(Key.generate())
    blob = bytearray(sealer.seal(TOKEN, human_id="usr_1", column="access_token"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptError, match="usr_1"):
        sealer.open(bytes(blob), human_id="usr_1", column="access_token")


@pytest.mark.parametrize("length", [0, 1, 21, 36])
def test_truncated_blob_fails(length: int) -> None:
    sealer = Sealer(Key.generate())
    blob = sealer.seal("", human_id="usr_1", column="access_token")
    assert len(blob) == 37
    with pytest.raises(DecryptError, match="truncated"):
        sealer.open(blob[:length], human_id="usr_1", column="access_token")


def test_unknown_version_fails() -> None:
    sealer = Sealer(Key.generate())
    blob = sealer.seal(TOKEN, human_id="usr_1", column="access_token")
    with pytest.raises(DecryptError, match="unknown format version 2"):
        sealer.open(b"\x02" + blob[1:], human_id="usr_1", column="access_token")
    assert sealed_key_id(b"\x02" + blob[1:]) is None


def test_blob_of_another_key_fails_naming_that_key() -> None:
    other = Key.generate()
    blob = Sealer(other).seal(TOKEN, human_id="usr_1", column="refresh_token")
    with pytest.raises(DecryptError, match=f"sealed with key {other.key_id}, which is not loaded"):
        Sealer(Key.generate()).open(blob, human_id="usr_1", column="refresh_token")


def test_older_keys_open_while_the_current_key_seals() -> None:
    old, new = Key.generate(), Key.generate()
    old_blob = Sealer(old).seal(TOKEN, human_id="usr_1", column="access_token")
    rotated = Sealer(new, [old])
    assert rotated.open(old_blob, human_id="usr_1", column="access_token") == TOKEN
    assert new.key_id == sealed_key_id(rotated.seal(TOKEN, human_id="usr_1", column="x"))
    assert new.key_id == rotated.current_key_id
    assert (new.key_id, old.key_id) == rotated.key_ids
    assert repr(rotated) == f"Sealer(key_ids={rotated.key_ids!r})"


def test_the_same_key_twice_is_refused() -> None:
    key = Key.generate()
    with pytest.raises(ValueError, match="more than once"):
        Sealer(key, [Key(MATERIAL), key])


# -- fingerprint -------------------------------------------------------------------------


def test_fingerprint_is_short_stable_and_one_way() -> None:
    fp = fingerprint(TOKEN)
    assert len(fp) == 12
    assert int(fp, 16) >= 0
    assert fp == fingerprint(TOKEN)
    assert fp == fingerprint(Secret(TOKEN))
    assert fp != fingerprint(TOKEN + "x")
    assert fp not in TOKEN


# -- bound values ------------------------------------------------------------------------


def test_a_blob_opens_only_beside_the_values_it_was_bound_to() -> None:
    sealer = Sealer(Key.generate())
    values = ("grant-row", "status:read", "active", "0x1.ad27480000000p+30")
    bound = RowValues(*values)
    blob = sealer.seal(TOKEN, human_id="usr_1", column="access_token", bound=bound)
    assert sealer.open(blob, human_id="usr_1", column="access_token", bound=bound) == TOKEN
    for other in (
        None,  # nothing bound
        RowValues(*values[:-1]),
        RowValues(values[0], "status:read tasks:dispatch", *values[2:]),  # a scope widened
        RowValues(values[0], values[1] + values[2], "", values[3]),  # same bytes, split otherwise
    ):
        with pytest.raises(DecryptError, match="tampered with or belongs to another row"):
            sealer.open(blob, human_id="usr_1", column="access_token", bound=other)


def test_without_bound_values_the_associated_data_is_the_first_stores_own() -> None:
    """Blobs sealed before values could be bound (version, key id, human id and column,
    each length-prefixed) still open: stores of that time migrate by opening them."""
    key = Key(MATERIAL)
    raw_id = bytes.fromhex(key.key_id)
    nonce = b"\x07" * 12
    aad = b"\x01" + raw_id + b"\x00\x00\x00\x05usr_1" + b"\x00\x00\x00\x0caccess_token"
    sealed = AESGCM(MATERIAL).encrypt(nonce, TOKEN.encode(), aad)
    blob = bytes((BLOB_VERSION,)) + raw_id + nonce + sealed
    assert Sealer(key).open(blob, human_id="usr_1", column="access_token") == TOKEN
