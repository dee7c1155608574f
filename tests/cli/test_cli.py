import json
import subprocess
import sys

import pytest

from weightspace.cli.main import main


def test_spec_json_has_the_promised_fields(capsys):
    assert main(["spec", "resnet20?width=1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["verified"] is True and d["max_abs_diff"] <= 1e-5
    assert {"groups", "fixed", "permutable_fraction"} <= set(d)
    g = d["groups"][0]
    assert {"name", "size", "members"} <= set(g)
    assert all(":" in m for m in g["members"])


def test_spec_vit_shows_heads(capsys):
    ref = "timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=1"
    assert main(["spec", ref, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    parents = {g["parent"] for g in d["groups"] if g.get("parent")}
    assert d["verified"] and any(p.endswith(".heads") for p in parents)


def test_spec_table_and_out_file(tmp_path, capsys):
    out = tmp_path / "spec.json"
    assert main(["spec", "mlp:64-16-10", "--input-shape", "2,64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verification: PASSED" in text and "permutable hidden units: 100.0%" in text
    assert json.loads(out.read_text())["groups"][0]["size"] == 16


@pytest.mark.parametrize("args,match", [
    (["spec", "resnet99"], "unknown architecture"),
    (["spec", "mlp:64-16-10", "--input-shape", "2,x"], "--input-shape"),
    (["spec", "nope.safetensors"], "no such file"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, match):
    out = tmp_path / "spec.json"
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_spec_of_a_checkpoint(tmp_path, capsys):
    from weightspace.arch import build
    from weightspace.checkpoint import save_checkpoint
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, build("mlp:64-16-10"), "mlp:64-16-10")
    assert main(["spec", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arch"] == "mlp:64-16-10"


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "weightspace.cli.main", "spec", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--input-shape" in r.stdout


HEAVY = ("torch", "numpy", "scipy", "timm", "torchvision", "safetensors", "accelerate",
         "sklearn", "matplotlib")
HELP_VERBS = [["align"], ["canonicalize"], ["lmc"], ["merge"], ["spec"], ["zoo", "train"],
              ["zoo", "import"], ["zoo", "list"], ["zoo", "eval"], ["generate", "fit"],
              ["generate", "sample"], ["generate", "eval"], ["generate", "run"]]


@pytest.mark.parametrize("verb", HELP_VERBS, ids=" ".join)
def test_every_verb_help_answers_without_importing_torch(verb):
    """A verb's --help needs the registries and defaults only: the method files, registries
    and settings modules must import no heavy library at module level."""
    code = ("import sys; from weightspace.cli.main import main\n"
            f"try: main({verb + ['--help']!r})\nexcept SystemExit: pass\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: weightspace " + " ".join(verb) in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout.strip().splitlines()[-1]


def test_top_level_help_does_not_import_torch():
    code = ("import sys; from weightspace.cli.main import main; rc = main(['--help']); "
            "print(rc, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("0 False"), r.stdout + r.stderr
    assert "generate" in r.stdout and "canonicalize" in r.stdout


def test_lazy_packages_export_what_eager_imports_did():
    """Packages import their parts on first use; an export named like its submodule
    (``generate.audit``) stays the exported function even after the submodule is imported,
    and every listed export resolves."""
    code = ("import importlib, weightspace.generate.audit, weightspace.generate.run\n"
            "from weightspace.generate import audit\n"
            "assert callable(audit) and not hasattr(audit, '__path__'), type(audit)\n"
            "for pkg in ('canonicalize', 'merge', 'generate', 'zoo'):\n"
            "    m = importlib.import_module('weightspace.' + pkg)\n"
            "    for name in m.__all__:\n"
            "        getattr(m, name)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
