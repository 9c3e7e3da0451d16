"""Coverage-guided fuzzing (atheris, libFuzzer) of the socket's request path and the token
answer parser, for a fixed time; the corpus it keeps lives in the repo and the tests replay
it (tests/test_fuzz_corpus.py) without atheris.

    .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python bench/fuzz.py --target http --seconds 600 --update
    .venv/bin/python bench/fuzz.py --target token_answer --seconds 600 --update

Each run starts from tests/fuzz_corpus/<target>/, fuzzes for ``--seconds`` (libFuzzer's
``-max_total_time``) into a scratch corpus, then merges that (``-merge=1``) into the
smallest set of inputs that keeps every feature found; ``--update`` writes that set back
to the repo, cut to the repo's bounds (``--max-files``, ``--max-bytes``: smallest inputs
first). A crash is written as ``crash-<sha1>`` in the scratch directory and the run fails
with it; replay it with ``--replay FILE``. The targets are tests/fuzz_targets.py's.

The figures (total execs, execs/s, libFuzzer's ``cov``: edges of haasd's code reached,
``ft``: features, the corpus before and after) are printed at the end, and as JSON with
``--json``. ``--seed`` fixes libFuzzer's seed (0: libFuzzer picks one and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
CORPUS: Final = ROOT / "tests" / "fuzz_corpus"
TARGETS: Final = ("http", "token_answer")
_STAT: Final = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_PROGRESS: Final = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")


def child(target: str, libfuzzer_args: list[str]) -> None:
    """In the child process: instrument haasd, then hand over to libFuzzer."""
    import atheris

    from haasd.logs import configure_logging

    configure_logging("error", "console", stream=sys.stderr)
    with atheris.instrument_imports(include=["haasd"]):
        import fuzz_targets
    function = fuzz_targets.TARGETS[target]
    # libFuzzer runs argv[0] again for -merge: the wrapper that leads back here
    atheris.Setup([os.environ["HAASD_FUZZ_SELF"], *libfuzzer_args], function)
    atheris.Fuzz()


def run_child(target: str, args: list[str], log: Path) -> int:
    self = log.parent / f"fuzz-{target}.sh"
    self.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" --child {target} -- "$@"\n')
    self.chmod(0o755)
    env = {**os.environ, "HAASD_FUZZ_SELF": str(self)}
    with log.open("w") as out:
        return subprocess.run(
            [str(self), *args], stderr=out, stdout=out, env=env, check=False
        ).returncode


def figures(log: str) -> dict[str, object]:
    """The last progress line's and the final stats of a libFuzzer log."""
    out: dict[str, object] = {k: int(v) for k, v in _STAT.findall(log)}
    progress = _PROGRESS.findall(log)
    if progress:
        execs, cov, ft, corp, size = progress[-1]
        out.update(execs=int(execs), cov=int(cov), ft=int(ft), corpus=int(corp), size=size)
    seed = re.search(r"Seed: (\d+)", log)
    out["seed"] = int(seed.group(1)) if seed else None
    return out


def keep(merged: Path, repo: Path, max_files: int, max_bytes: int) -> tuple[int, int]:
    """Write the merged corpus to ``repo``, smallest inputs first, within the bounds."""
    files = sorted((p for p in merged.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    kept: list[Path] = []
    total = 0
    for path in files:
        size = path.stat().st_size
        if len(kept) >= max_files or total + size > max_bytes:
            break
        kept.append(path)
        total += size
    for old in repo.iterdir():
        old.unlink()
    for path in kept:
        shutil.copy(path, repo / path.name)
    return len(kept), total


def fuzz(options: argparse.Namespace) -> dict[str, object]:
    repo = CORPUS / options.target
    repo.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"fuzz-{options.target}-"))
    work, merged = scratch / "work", scratch / "merged"
    merged.mkdir()
    if options.merge_only is not None:  # a run's scratch corpus, merged again
        shutil.copytree(options.merge_only, work)
        options.seconds = 0
        return merge(options, repo, scratch, {"target": options.target, "exit": 0})
    work.mkdir()
    common = [f"-seed={options.seed}", "-timeout=10", "-rss_limit_mb=2048", "-max_len=8192"]
    started = time.monotonic()
    timed = [f"-max_total_time={options.seconds}", "-print_final_stats=1"]
    where = [f"-artifact_prefix={scratch}/", str(work), str(repo)]
    code = run_child(options.target, [*common, *timed, *where], scratch / "fuzz.log")
    elapsed = time.monotonic() - started
    result = figures((scratch / "fuzz.log").read_text(errors="replace"))
    result.update(target=options.target, seconds=round(elapsed, 1), exit=code)
    result["crashes"] = sorted(str(p) for p in scratch.glob("crash-*"))
    return merge(options, repo, scratch, result)


def merge(
    options: argparse.Namespace, repo: Path, scratch: Path, result: dict[str, object]
) -> dict[str, object]:
    """Merge the scratch corpus and the repo's into the smallest set keeping every feature
    (and, with ``--update``, write it back)."""
    work, merged = scratch / "work", scratch / "merged"
    result["corpus_before"] = len(list(repo.iterdir()))
    run_child(options.target, ["-merge=1", str(merged), str(work), str(repo)], scratch / "m.log")
    log = (scratch / "m.log").read_text(errors="replace")
    found = re.search(r"MERGE-OUTER: (\d+) new files with (\d+) new features", log)
    result["merged"] = len(list(merged.iterdir()))
    result["merge_features"] = int(found.group(2)) if found else None
    if options.update and result["exit"] == 0:
        result["kept"], result["kept_bytes"] = keep(
            merged, repo, options.max_files, options.max_bytes
        )
    result["scratch"] = str(scratch)
    return result


def replay(target: str, path: Path) -> None:
    import fuzz_targets

    fuzz_targets.TARGETS[target](path.read_bytes())
    print(f"{path}: no failure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=TARGETS, default="http")
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--update", action="store_true", help="write the corpus back")
    parser.add_argument("--max-files", type=int, default=100)
    parser.add_argument("--max-bytes", type=int, default=100_000)
    parser.add_argument("--replay", type=Path, help="run one input through the target")
    parser.add_argument("--merge-only", type=Path, help="merge a run's scratch corpus again")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options.child, options.rest)
        return
    if options.replay:
        replay(options.target, options.replay)
        return
    result = fuzz(options)
    if options.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name:>28}: {value}")
    if result.get("crashes") or result["exit"] != 0:
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
