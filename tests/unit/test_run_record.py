"""The git state a run records, read from real repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hparam_search.launch.plan import _git_state


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                          cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_and_whether_the_tree_changed(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # even inside a repo
    assert _git_state(tmp_path) is None  # not a repository
    _git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("print('hi')\n")
    assert _git_state(tmp_path) is None  # no commit yet
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert _git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert _git_state(tmp_path) == {"commit": head, "dirty": True}
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "train.py").write_text("print('changed')\n")
    assert _git_state(tmp_path) == {"commit": head, "dirty": True}
    _git(tmp_path, "checkout", "-q", "--detach")  # a detached head still names its commit
    assert _git_state(tmp_path) == {"commit": head, "dirty": True}
