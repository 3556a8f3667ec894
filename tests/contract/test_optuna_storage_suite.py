"""Optuna's own storage test suite, run against the storages the launcher builds.

The suite ships in Optuna's sdist, not in its wheel: the sdist of the installed version is
downloaded once into a cache folder, and its tests/storages_tests run in a subprocess with
optuna_storage_plugin.py loaded, which points them at our storage.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NoReturn

import optuna
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hparam-search-tests"
# Kinds of storage the launcher builds. "postgresql" runs on the postgres_url fixture's server.
KINDS = ["sqlite", "postgresql"]
# Optuna 5.0.0's suite runs 118 tests on our two modes, bare and cached (122 with grpcio
# installed): far fewer means the modes were not picked up.
MIN_TESTS = 100
SUITE_TIMEOUT_S = 1800
# Optuna's own pytest settings (its pyproject.toml), instead of ours (filterwarnings = error).
PYTEST_INI = """\
[pytest]
filterwarnings = ignore::optuna.exceptions.ExperimentalWarning
markers = slow: Optuna's slow tests
"""


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI must run the suite, not skip it quietly
    pytest.skip(reason)


def _optuna_sdist() -> Path:
    """The sdist of the installed Optuna, downloaded into CACHE on first use."""
    version = optuna.__version__
    sdist = CACHE / f"optuna-{version}.tar.gz"
    if sdist.exists():
        return sdist
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as partial:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "--retries", "2", "--timeout", "30",
                   f"optuna=={version}", "-d", partial]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
            error = proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
        except subprocess.TimeoutExpired:
            error = ["pip download timed out"]
        found = sorted(Path(partial).glob("*.tar.gz"))
        if error or not found:
            _unavailable(f"cannot download Optuna {version}'s sdist: "
                         f"{error[0] if error else 'no .tar.gz'}")
        os.replace(found[0], sdist)  # whole or absent: a concurrent run never sees half a file
    return sdist


def _extract_suite(sdist: Path, dest: Path) -> Path:
    """The sdist's tests/conftest.py and tests/storages_tests (they import nothing else from
    tests/), as dest/optuna_tests: renamed, since this repo's own package is called tests."""
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            _top, _, path = member.name.partition("/")
            rel = Path(path).relative_to("tests") if path.startswith("tests/") else None
            if not member.isfile() or rel is None or ".." in rel.parts:
                continue
            if rel.parts[0] == "storages_tests" or str(rel) in ("__init__.py", "conftest.py"):
                target = dest / "optuna_tests" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    (dest / "pytest.ini").write_text(PYTEST_INI)
    return dest / "optuna_tests"


@pytest.fixture(scope="module")
def optuna_suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    suite = _extract_suite(_optuna_sdist(), tmp_path_factory.mktemp("optuna-suite"))
    if not (suite / "storages_tests").is_dir():
        pytest.fail(f"no tests/storages_tests in Optuna {optuna.__version__}'s sdist")
    return suite


def _counts(output: str) -> dict[str, int]:
    """{"passed": n, "failed": n, ...} from pytest's final line ("2 failed, 9 passed in 3s")."""
    finals = [line for line in output.splitlines() if re.search(r" in [\d.]+s\b", line)]
    found = re.findall(r"(\d+) (\w+)", finals[-1]) if finals else []
    return {word.rstrip("s") if word.startswith("error") else word: int(n) for n, word in found}


@pytest.mark.parametrize("kind", KINDS)
def test_optuna_storage_suite(kind: str, optuna_suite: Path, tmp_path: Path,
                              request: pytest.FixtureRequest) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    path = [str(HERE), str(REPO), env.get("PYTHONPATH", "")]  # the plugin, hparam_search
    # COLUMNS: wide enough that each FAILED line keeps its reason.
    env.update(PYTHONPATH=os.pathsep.join(p for p in path if p), TMPDIR=str(tmp_path),
               COLUMNS="300", HPARAM_SEARCH_CONTRACT_KIND=kind,
               # Not UTC, and not a whole hour off: stored times are naive UTC, read back local.
               TZ="Asia/Kolkata")
    if kind == "postgresql":
        env["HPARAM_SEARCH_CONTRACT_PG_URL"] = request.getfixturevalue("postgres_url")
    root = optuna_suite.parent
    command = [sys.executable, "-m", "pytest", str(optuna_suite / "storages_tests"),
               "-c", str(root / "pytest.ini"), "--rootdir", str(root),
               "-p", "optuna_storage_plugin", "-p", "no:cacheprovider",
               "-q", "--tb=short", "-rfEs", "--color=no"]
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                          timeout=SUITE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    output, returncode = proc.stdout + proc.stderr, proc.returncode
    print(output)  # shown when the test fails
    counts = _counts(output)
    built = re.search(r"hparam_search storages built: (\d+)", output)
    summary = "\n".join(line for line in output.splitlines()
                        if line.startswith(("FAILED", "ERROR"))) or output[-3000:]
    assert returncode == 0 and not counts.get("failed") and not counts.get("error"), (
        f"Optuna's storage tests fail on our {kind} storage {counts}:\n{summary}")
    assert counts.get("passed", 0) >= MIN_TESTS, f"too few tests ran: {counts}"
    # Every test that passed ran on a storage the plugin built with build_storage.
    assert built is not None and int(built[1]) >= counts["passed"], output[-3000:]
