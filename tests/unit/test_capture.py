"""A worker's output capture: one pipe and one copying thread for every trial of the worker, so
each trial's output has to land in its own log, whole, and nowhere else. Run in a child
interpreter, whose fds 1 and 2 the capture may take over (pytest's own capture holds ours)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PROGRAM = textwrap.dedent('''
    import json, os, subprocess, sys
    from pathlib import Path
    from hparam_search.launch.capture import OutputCapture

    folder = Path(sys.argv[1])
    relayed = []
    capture = OutputCapture(relayed.append)
    marker_like = b"\\x00hparam-search-end-0123456789abcdef\\x00"
    big = b"".join(b"line %06d " % i + b"x" * 50 + b"\\n" for i in range(5000))  # > a pipe
    with capture.trial(folder / "a.log", "[a] "):
        print("a1", flush=True)
        os.write(1, b"a2\\n")
        print("a3", file=sys.stderr, end="")  # no newline: still relayed at the trial's end
    with capture.trial(folder / "silent.log", "[s] "):
        pass
    with capture.trial(folder / "big.log", "[b] "):
        os.write(1, marker_like + b"\\n")
        sys.stdout.buffer.write(big)
        subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
    with capture.trial(folder / "last.log", "[l] "):
        print("last", end="")
    print(json.dumps(relayed))
''')


def test_each_trial_s_output_lands_whole_in_its_own_log_only(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], env=env,
                          capture_output=True, timeout=60, check=True)
    relayed = "".join(json.loads(done.stdout.decode().splitlines()[-1]))

    assert (tmp_path / "a.log").read_bytes() == b"a1\na2\na3"
    assert not (tmp_path / "silent.log").exists()  # made at a trial's first output only
    big = b"".join(b"line %06d " % i + b"x" * 50 + b"\n" for i in range(5000))
    assert (tmp_path / "big.log").read_bytes() == (
        b"\x00hparam-search-end-0123456789abcdef\x00\n" + big + b"from a child\n")
    assert (tmp_path / "last.log").read_bytes() == b"last"

    lines = relayed.splitlines()
    assert lines[:3] == ["[a] a1", "[a] a2", "[a] a3"]
    assert lines[-2:] == ["[b] from a child", "[l] last"]
    assert sum(line.startswith("[b] line ") for line in lines) == 5000
    assert all(line.startswith(("[a] ", "[b] ", "[l] ")) for line in lines)
    # None of it reached the real streams: only the program's own report did.
    assert done.stdout.count(b"\n") == 1 and done.stderr == b""
