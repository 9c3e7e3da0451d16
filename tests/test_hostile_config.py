"""Generated config files, valid and broken, through the config loader: either a Config,
or a :class:`~haasd.errors.ConfigError` that names the file, the key and the reason —
never another exception (a traceback is no message for an operator).

Documents are drawn from the schema (every section and key, unknown ones beside them)
with values of every TOML type, written as TOML text; and well-formed files are then
damaged byte by byte (TOML syntax, UTF-8). ``HAASD_*`` variables are drawn beside them.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from pathlib import Path

from hostile import profile, texts
from hypothesis import given
from hypothesis import strategies as st

from haasd.config import known_keys, load_config
from haasd.errors import ConfigError

KEYS = known_keys()
SECTIONS = sorted({k.split(".", 1)[0] for k in KEYS})
_plausible = st.sampled_from(
    (
        *("test", "live", "pro", "free", "json", "form", "debug", "console", "client_secret_basic"),
        *("http://127.0.0.1:9/token", "https://x.example/authorize", "ftp://x", "http://x/", ""),
        *("30d", "90s", "1h", "0s", "-1s", "1e999d", "15m", "0.75", "0660", "0o777", "abc"),
        *("haasd.db", "store.key", "/nonexistent/x", ".", "postgresql://u:p@h/db", "usr_*", "*"),
        *("tasks:dispatch", "status:read", "root", "nobody-such-user", "\x00", "é" * 3),
    )
)
scalars = st.one_of(
    _plausible,
    texts(max_size=12),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.booleans(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["uid", "x", "humans"]), scalars, max_size=2),
)
section_names = st.one_of(st.sampled_from([*SECTIONS, "access"]), texts(min_size=1, max_size=8))


def _key_names(section: str) -> st.SearchStrategy[str]:
    own = [k.split(".", 1)[1] for k in KEYS if k.startswith(section + ".")]
    return st.one_of(st.sampled_from(own or ["x"]), texts(min_size=1, max_size=8))


#: built once: a strategy made anew for every draw has its properties worked out anew
KEY_NAMES = {section: _key_names(section) for section in [*SECTIONS, "access"]}
_OTHER_KEYS = _key_names("")


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    """A config document: sections of keys from the schema (and others), any values;
    ``access`` as a list of rule tables, or as something else."""
    document: dict[str, object] = {}
    for section in draw(st.lists(section_names, max_size=6, unique=True)):
        table = draw(st.dictionaries(KEY_NAMES.get(section, _OTHER_KEYS), values, max_size=5))
        if section == "access" and draw(st.booleans()):
            document[section] = [
                table,
                draw(st.dictionaries(KEY_NAMES.get(section, _OTHER_KEYS), values)),
            ]
        else:
            document[section] = table if draw(st.integers(0, 9)) else draw(scalars)
    return document


def quoted(text: str) -> str:
    """A TOML basic string: JSON's escapes, but for characters beyond the BMP (TOML takes
    no surrogate pairs) and with DEL escaped (JSON leaves it)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml(value: object) -> str:
    """``value`` as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{quoted(k)} = {toml(v)}" for k, v in value.items()) + "}"
    return quoted(str(value))


def toml_text(document: dict[str, object]) -> str:
    top = [f"{quoted(k)} = {toml(v)}" for k, v in document.items() if not _is_tables(v)]
    lines = top[:]
    for name, body in document.items():
        if isinstance(body, dict):
            lines += [f"[{quoted(name)}]"] + [f"{quoted(k)} = {toml(v)}" for k, v in body.items()]
        elif isinstance(body, list) and _is_tables(body):
            for table in body:
                lines.append(f"[[{quoted(name)}]]")
                lines += [f"{quoted(k)} = {toml(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _is_tables(value: object) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )


@st.composite
def damaged(draw: st.DrawFn, text: str) -> bytes:
    """``text``'s bytes with a few bytes replaced, inserted or removed."""
    data = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from([b"[", b"]", b'"', b"=", b"\n", b"\xff", b"\x00", b"#"]))
        if what == "insert" or at == len(data):
            data[at:at] = byte
        elif what == "replace":
            data[at : at + 1] = byte
        else:
            del data[at]
    return bytes(data)


environments = st.dictionaries(
    st.sampled_from([f"HAASD_{k.replace('.', '_').upper()}" for k in KEYS] + ["HAASD_HAAS_X"]),
    _plausible,
    max_size=2,
)
BASE: dict[str, object] = {
    "haas": {
        "environment": "test",
        "client_id": "c",
        "client_secret": "s",
        "redirect_uri": "http://127.0.0.1:8765/callback",
    },
    "store": {"path": "haasd.db", "key_file": "store.key"},
}


def outcome(path: Path, text: bytes, environ: dict[str, str]) -> ConfigError | None:
    """None if ``text`` loads as a config; the ConfigError if not (anything else raises)."""
    path.write_bytes(text)
    try:
        load_config(path, environ)
    except ConfigError as exc:
        return exc
    return None


def check(text: bytes, environ: dict[str, str], seen: Counter[str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "haasd.toml"
        error = outcome(path, text, environ)
    if error is None:
        seen["loaded"] += 1
        return
    seen[error.key] += 1
    assert error.file and error.key and error.reason, repr(error)
    assert str(error) == f"{error.file}: {error.key}: {error.reason}"
    if not error.file.startswith("environment variable "):
        assert error.file == str(path), error  # the file, as it was given


def test_a_config_file_loads_or_says_which_key_is_wrong_and_why() -> None:
    seen: Counter[str] = Counter()

    @profile(120)
    @given(document=documents(), environ=environments, damage=st.booleans(), data=st.data())
    def one(
        document: dict[str, object], environ: dict[str, str], damage: bool, data: st.DataObject
    ) -> None:
        text = toml_text({**BASE, **document})
        check(data.draw(damaged(text)) if damage else text.encode(), environ, seen)

    one()
    # files that load, broken TOML, and wrong values of many keys were all tried
    assert seen["loaded"] and seen["(file)"] and len(seen) >= 10, seen
