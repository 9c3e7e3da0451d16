# Sourced by .ci/test and .ci/demo: make .venv (once) and install haasd into it.
VENV=${HAASD_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    PY=""
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PY=$candidate
            break
        fi
    done
    if [ -z "$PY" ]; then
        echo "haasd needs Python 3.11 or newer; install it and run this again." >&2
        exit 1
    fi
    printf '== creating %s with %s\n' "$VENV" "$("$PY" --version)"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[${HAASD_EXTRAS:-test}]"
