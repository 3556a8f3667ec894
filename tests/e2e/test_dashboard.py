"""`hparam-search dashboard` serves optuna-dashboard, and a real browser shows the study."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO, UserProject, wait_for

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--virtual-time-budget=15000"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def browse(browser: str, url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120)


def test_dashboard_shows_the_study_in_a_real_browser(project: UserProject, tmp_path: Path) -> None:
    browser = chromium()
    project.write_config(n_jobs=2, n_trials=5)
    assert project.run().returncode == 0
    port = free_port()
    env = project.env()
    server = subprocess.Popen([sys.executable, "-m", "hparam_search.cli", "dashboard", "exp_t",
                               "--port", str(port)], cwd=project.root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()
        assert first.strip() == (f"optuna-dashboard for study 'exp_t': "
                                 f"http://127.0.0.1:{port}/dashboard/studies/1")
        wait_for(lambda: up(f"http://127.0.0.1:{port}/api/studies"), timeout=60, interval=0.2)
        page = f"http://127.0.0.1:{port}/dashboard/studies/1/trials"
        dom = browse(browser, page, tmp_path / "profile", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "exp_t (id=1)" in dom.stdout
        assert "5 Trials" in dom.stdout
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        shot.unlink(missing_ok=True)
        browse(browser, page, tmp_path / "profile", "--window-size=1280,900",
               f"--screenshot={shot}")
        with Image.open(shot) as image:
            assert image.size == (1280, 900)
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
            assert colours is None or len(colours) > 20  # a rendered page, not a blank one
    finally:
        server.terminate()
        rest, _ = server.communicate(timeout=30)
    assert "GET /" not in rest  # requests are not echoed


def test_dashboard_refuses_a_port_in_use_before_announcing_it(project: UserProject) -> None:
    project.write_config(n_jobs=1, n_trials=1)
    assert project.run().returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "hparam_search.cli", "dashboard", "exp_t",
                                 "--port", str(port)], cwd=project.root, env=project.env(),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: cannot serve on 127.0.0.1:{port}: ")
    assert result.stderr.endswith("Pick another --port.\n")
