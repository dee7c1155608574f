"""Two commands writing the same new zoo at once: one wins and finishes, the other is
refused (or finds the zoo done) and removes nothing it did not create."""
import json
import os
import subprocess
import sys

import pytest


def _train(out):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-m", "weightspace.cli.main", "zoo", "train",
                             "--arch", "mlp:64-8-10", "--dataset", "digits", "--models", "2",
                             "--epochs", "4", "--no-progress", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("attempt", range(2))
def test_two_writers_on_a_new_zoo(tmp_path, attempt):
    out = tmp_path / "zoo"
    procs = [_train(out), _train(out)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0, results                      # one writer won and finished
    for rc, err in results:
        if rc:
            assert "being written by another process" in err and "\n" not in err.strip()
    m = json.loads((out / "manifest.json").read_text())
    assert [e["status"] for e in m["models"]] == ["done", "done"]
    assert all((out / e["file"]).is_file() for e in m["models"])


def test_changed_settings_are_one_line(tmp_path):
    out = tmp_path / "zoo"
    first = _train(out)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "weightspace.cli.main", "zoo", "train", "--arch",
                        "mlp:64-8-10", "--dataset", "digits", "--models", "2", "--epochs", "2",
                        "--lr", "0.05", "--no-progress", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and "epochs" in line and "lr" in line, line
