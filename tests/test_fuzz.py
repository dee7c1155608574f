"""Bad input, as an attacker and as a careless user would give it, to every verb.

Each case runs the CLI in-process on copies of small real artefacts (a zoo, a canonical
zoo, a generator, a sample zoo, checkpoints) and asserts what the project promises for bad
input: exit code 2 (a refusal, not an internal error), one line on stderr naming the
problem, no traceback, nothing written anywhere (the whole working tree is hashed before
and after, the current directory included), the inputs unchanged, and no marker file
from code named in a file. The classes follow issue 12: code execution, paths from files,
output paths, schemas of what is read, numbers and shapes, errors that point to real flags.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightspace.arch import build
from weightspace.checkpoint import ARCH_KEY, META_KEY, VERSION_KEY, read_checkpoint, \
    save_checkpoint
from weightspace.cli.main import main
from weightspace.generate import fit_generator, sample_zoo
from weightspace.zoo import HParams, train_zoo

ARCH = "mlp:64-8-10"


# --------------------------------------------------------------------------- artefacts
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Pristine artefacts, built once; every test works on its own copy."""
    root = tmp_path_factory.mktemp("fuzz-base")
    train_zoo(root / "zoo", ARCH, "digits", HParams(epochs=1), models=3, progress=False)
    fit_generator(root / "zoo", root / "gen", steps=4, batch_size=3, width=8, depth=1,
                  pca=True, progress=False)
    sample_zoo(root / "gen", root / "samples", 2, steps=2)
    for i, name in enumerate(("a", "b")):
        state, _, _ = read_checkpoint(root / "zoo" / "models" / f"s{i:04d}.safetensors")
        save_checkpoint(root / f"{name}.safetensors", state, ARCH, {"dataset": "digits"})
        torch.save(state, root / f"{name}.pt")
    (root / "file.txt").write_text("a regular file\n")
    return root


@pytest.fixture
def w(base, tmp_path, monkeypatch) -> Path:
    work = tmp_path / "work"
    shutil.copytree(base, work)
    monkeypatch.chdir(work)  # `--out ''` and relative paths land here, inside the snapshot
    return work


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def refused(work: Path, args: list[str], capsys, match: str | None = None,
            marker: Path | None = None) -> str:
    """Run ``weightspace ARGS``; assert a clean refusal that changed nothing."""
    before = snapshot(work.parent)
    rc = main(args)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc} for {args}: {err}"
    assert len(lines) == 1 and lines[0].startswith("weightspace"), err
    assert "Traceback" not in err + out
    if match:
        assert match in lines[0], lines[0]
    assert snapshot(work.parent) == before, "something was written or an input changed"
    if marker is not None:
        assert not marker.exists(), "code named in a file ran"
    return lines[0]


def set_checkpoint_arch(path: Path, arch: str, meta: str | None = None) -> None:
    state = load_file(str(path))
    save_file(state, str(path), metadata={ARCH_KEY: arch, VERSION_KEY: "0",
                                          META_KEY: meta if meta is not None else "{}"})


def edit_json(path: Path, fn) -> None:
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


def payload(marker: Path) -> str:
    """An architecture reference that, if imported and called, creates ``marker``."""
    return f"builtins:open?file={marker}&mode=w"


# ------------------------------------------------------------------ 1. code execution
def _plant_everywhere(w: Path, ref: str) -> None:
    for p in [w / "a.safetensors", w / "b.safetensors", *(w / "zoo" / "models").glob("*"),
              *(w / "samples" / "models").glob("*")]:
        set_checkpoint_arch(p, ref, json.dumps({"dataset": "digits"}))
    edit_json(w / "gen" / "config.json", lambda c: (c.update(arch=ref),
                                                     c["encoding"].update(arch=ref)))
    enc = w / "gen" / "encoding.safetensors"
    with safe_open(str(enc), framework="pt") as f:
        meta = json.loads(f.metadata()["weightspace.encoding"])
    save_file(load_file(str(enc)), str(enc),
              metadata={"weightspace.encoding": json.dumps({**meta, "arch": ref})})


CODE_CASES = {
    "spec": lambda w: ["spec", "a.safetensors"],
    "align": lambda w: ["align", "a.safetensors", "b.safetensors", "--out", "x.safetensors"],
    "merge": lambda w: ["merge", "a.safetensors", "b.safetensors", "--out", "m.safetensors"],
    "lmc": lambda w: ["lmc", "a.safetensors", "b.safetensors", "--out", "rep"],
    "lmc-zoo": lambda w: ["lmc", "--zoo", "zoo", "--out", "rep"],
    "canonicalize": lambda w: ["canonicalize", "zoo", "--out", "canon", "--no-progress"],
    "zoo-eval": lambda w: ["zoo", "eval", "zoo"],
    "zoo-import": lambda w: ["zoo", "import", "a.safetensors", "b.safetensors", "--out", "z"],
    "generate-fit": lambda w: ["generate", "fit", "zoo", "--out", "g", "--steps", "2",
                               "--no-progress"],
    "generate-sample": lambda w: ["generate", "sample", "gen", "--out", "s", "-n", "2"],
    "generate-eval": lambda w: ["generate", "eval", "samples", "--zoo", "zoo", "--out", "r"],
    "generate-run": lambda w: ["generate", "run", "zoo", "--out", "r", "--steps", "2",
                               "--no-progress"],
}


@pytest.mark.parametrize("case", sorted(CODE_CASES))
def test_code_named_in_a_file_never_runs(w, capsys, case):
    marker = w.parent / "MARKER"
    _plant_everywhere(w, payload(marker))
    refused(w, CODE_CASES[case](w), capsys, "--allow-code", marker)


def test_code_in_the_zoo_train_arch_flag_is_refused(w, capsys):
    marker = w.parent / "MARKER"
    refused(w, ["zoo", "train", "--arch", payload(marker), "--models", "1", "--out", "z"],
            capsys, "--allow-code", marker)


def test_allow_code_is_what_lets_code_run(w, capsys):
    """The payload is live: with --allow-code it is imported and called (and then refused
    because it is not a model) - so the marker tests above would see a breach."""
    marker = w.parent / "MARKER"
    _plant_everywhere(w, payload(marker))
    assert main(["spec", "a.safetensors", "--allow-code"]) == 2
    assert marker.exists()
    assert "not nn.Module" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [["spec"], ["align"], ["canonicalize"], ["lmc"], ["merge"],
                                  ["zoo", "train"], ["zoo", "eval"], ["zoo", "import"],
                                  ["generate", "fit"],
                                  ["generate", "sample"], ["generate", "eval"],
                                  ["generate", "run"]])
def test_every_verb_that_builds_from_a_file_lists_allow_code(verb, capsys):
    assert main([*verb, "--help"]) == 0
    assert "--allow-code" in capsys.readouterr().out


# ------------------------------------------------------------------ 2. paths from files
@pytest.mark.parametrize("bad_id", ["../../escaped", "/tmp/escaped", "..", ".hidden",
                                    "a/b", "", 7])
@pytest.mark.parametrize("case", ["canonicalize", "zoo-eval", "lmc-zoo", "generate-fit",
                                  "zoo-list"])
def test_unsafe_model_ids_in_a_manifest_are_refused(w, capsys, bad_id, case):
    edit_json(w / "zoo" / "manifest.json", lambda m: m["models"][1].update(id=bad_id))
    args = CODE_CASES[case](w) if case in CODE_CASES else ["zoo", "list", "zoo"]
    line = refused(w, args, capsys, "manifest.json")
    assert "models[1]" in line


def test_duplicate_ids_are_refused(w, capsys):
    edit_json(w / "zoo" / "manifest.json", lambda m: m["models"][1].update(id="s0000"))
    refused(w, ["zoo", "eval", "zoo"], capsys, "duplicate id")


# ------------------------------------------------------------------ 3. output paths
FILE_OUT = {
    "align": ["align", "a.safetensors", "b.safetensors", "--out"],
    "merge": ["merge", "a.safetensors", "b.safetensors", "--out"],
    "spec": ["spec", "mlp:64-8-10", "--out"],
}
DIR_OUT = {
    "lmc": ["lmc", "a.safetensors", "b.safetensors", "--points", "3", "--out"],
    "canonicalize": ["canonicalize", "zoo", "--no-progress", "--out"],
    "zoo-train": ["zoo", "train", "--arch", ARCH, "--models", "1", "--epochs", "1",
                  "--no-progress", "--out"],
    "generate-fit": ["generate", "fit", "zoo", "--steps", "2", "--no-progress", "--out"],
    "zoo-import": ["zoo", "import", "a.safetensors", "b.safetensors", "--out"],
    "generate-sample": ["generate", "sample", "gen", "-n", "2", "--out"],
    "generate-eval": ["generate", "eval", "samples", "--zoo", "zoo", "--out"],
    "generate-run": ["generate", "run", "zoo", "--steps", "2", "--no-progress", "--out"],
}


@pytest.mark.parametrize("case", sorted(FILE_OUT))
@pytest.mark.parametrize("out,match", [("zoo", "is a directory"), ("", "empty"),
                                       ("file.txt/x.safetensors", "is a file"),
                                       ("file.txt/deeper/x.json", "is a file")])
def test_file_outputs(w, capsys, case, out, match):
    if case != "spec" and out == "zoo":  # a model --out without .safetensors is a Hub dir
        match = "holds files other than a checkpoint's"
    refused(w, FILE_OUT[case] + [out], capsys, match)


@pytest.mark.parametrize("case", sorted(DIR_OUT))
@pytest.mark.parametrize("out,match", [("file.txt", "not a directory"), ("", "empty"),
                                       ("file.txt/sub", "is a file")])
def test_directory_outputs(w, capsys, case, out, match):
    refused(w, DIR_OUT[case] + [out], capsys, match)


def test_lmc_report_file_names_taken_by_directories(w, capsys):
    (w / "rep" / "lmc.json").mkdir(parents=True)
    refused(w, DIR_OUT["lmc"] + ["rep"], capsys, "lmc.json")


# ------------------------------------------------------------------ 4. schemas
@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(version="2"), "version"),
    (lambda m: m.update(version=99), "newer"),
    (lambda m: m.update(models=[1, 2]), "models[0]"),
    (lambda m: m.update(models={"a": 1}), "models"),
    (lambda m: m.update(format="other"), "not a weightspace zoo"),
    (lambda m: m.update(dataset="digits"), "dataset"),
    (lambda m: m["models"][0].update(metrics=[0.5]), "metrics"),
    (lambda m: m["models"][0].update(status=1), "status"),
])
@pytest.mark.parametrize("case", ["zoo-eval", "canonicalize", "generate-fit", "zoo-list"])
def test_manifest_schema(w, capsys, edit, match, case):
    edit_json(w / "zoo" / "manifest.json", edit)
    args = CODE_CASES[case](w) if case in CODE_CASES else ["zoo", "list", "zoo"]
    refused(w, args, capsys, match)


def test_manifest_that_is_not_json(w, capsys):
    (w / "zoo" / "manifest.json").write_text('{"format": "weightspace.zoo", "mod')
    refused(w, ["zoo", "eval", "zoo"], capsys, "not valid JSON")


@pytest.mark.parametrize("meta", ["[1, 2]", "3", '"text"', "null", "{bad"])
def test_checkpoint_metadata_that_is_not_an_object(w, capsys, meta):
    set_checkpoint_arch(w / "a.safetensors", ARCH, meta)
    refused(w, ["align", "a.safetensors", "b.safetensors", "--out", "x.safetensors"], capsys,
            "weightspace.meta")


@pytest.mark.parametrize("damage,match", [
    (lambda g: (g / "config.json").write_text((g / "config.json").read_text()[:40]),
     "not a generator directory"),
    (lambda g: edit_json(g / "config.json", lambda c: c.update(format="x")), "format"),
    (lambda g: edit_json(g / "config.json", lambda c: c.update(version="1")), "version"),
    (lambda g: edit_json(g / "config.json", lambda c: c.update(arch=5)), "arch"),
    (lambda g: edit_json(g / "config.json", lambda c: c.update(dataset="digits")), "dataset"),
    (lambda g: edit_json(g / "config.json", lambda c: c.update(condition={"name": "v"})),
     "condition"),
    (lambda g: (g / "config.json").unlink(), "not a generator directory"),
    (lambda g: save_file(load_file(str(g / "generator.safetensors")),
                         str(g / "generator.safetensors")), "weightspace.velocity"),
    (lambda g: save_file(load_file(str(g / "generator.safetensors")),
                         str(g / "generator.safetensors"),
                         metadata={"weightspace.velocity": json.dumps(
                             {"kind": "mlp", "dim": 2, "width": 10**9, "depth": 3})}),
     "width"),
    (lambda g: save_file(load_file(str(g / "generator.safetensors")),
                         str(g / "generator.safetensors"),
                         metadata={"weightspace.velocity": "[1]"}), "JSON object"),
    (lambda g: (g / "generator.safetensors").write_bytes(
        (g / "generator.safetensors").read_bytes()[:100]), "generator"),
    (lambda g: (g / "encoding.safetensors").write_bytes(
        (g / "encoding.safetensors").read_bytes()[:100]), "encoding"),
    (lambda g: save_file({k: v for k, v in load_file(str(g / "encoding.safetensors")).items()
                          if k != "basis"}, str(g / "encoding.safetensors"),
                         metadata={"weightspace.encoding": json.dumps(
                             {"arch": ARCH, "keys": ["0.weight"], "shapes": [[8, 64]]})}),
     "encoding"),
])
def test_damaged_generator_files(w, capsys, damage, match):
    damage(w / "gen")
    refused(w, ["generate", "sample", "gen", "--out", "s", "-n", "2"], capsys, match)


# ------------------------------------------------------------------ 5. numbers and shapes
@pytest.mark.parametrize("args,match", [
    (["lmc", "a.safetensors", "b.safetensors", "--out", "r", "--points", "1"], "--points"),
    (["lmc", "a.safetensors", "b.safetensors", "--out", "r", "--points", "10000000000"],
     "--points"),
    (["lmc", "a.safetensors", "b.safetensors", "--out", "r", "--pairs", "0"], "--pairs"),
    (["lmc", "--zoo", "zoo", "--out", "r", "--pairs", "many"], "--pairs"),
    (["generate", "sample", "gen", "--out", "s", "-n", "0"], "-n"),
    (["generate", "sample", "gen", "--out", "s", "-n", "1000000000000"], "-n"),
    (["generate", "sample", "gen", "--out", "s", "--steps", "0"], "--steps"),
    (["generate", "sample", "gen", "--out", "s", "--guidance", "lots"], "guidance"),
    (["generate", "fit", "zoo", "--out", "g", "--steps", "0"], "--steps"),
    (["generate", "fit", "zoo", "--out", "g", "--batch-size", "-3"], "--batch-size"),
    (["generate", "fit", "zoo", "--out", "g", "--lr", "nan"], "--lr"),
    (["generate", "fit", "zoo", "--out", "g", "--width", "10000000000"], "--width"),
    (["generate", "fit", "zoo", "--out", "g", "--velocity", "transformer", "--token", "0"],
     "--token"),
    (["generate", "fit", "zoo", "--out", "g", "--velocity", "transformer", "--heads", "3",
      "--width", "32", "--no-progress"], "divisible"),
    (["generate", "fit", "zoo", "--out", "g", "--p-uncond", "1"], "--p-uncond"),
    (["generate", "eval", "samples", "--zoo", "zoo", "--out", "r", "--ensemble", "0"],
     "--ensemble"),
    (["generate", "run", "zoo", "--out", "r", "-n", "0"], "-n"),
    (["generate", "run", "zoo", "--out", "r", "--sample-steps", "0"], "--sample-steps"),
    (["generate", "run", "zoo", "--out", "r", "--guidance", "lots"], "guidance"),
    (["generate", "run", "zoo", "--out", "r", "--mix", "0"], "--mix"),
    (["generate", "sample", "g", "--out", "s", "--mix", "lots"], "--mix"),
    (["generate", "sample", "g", "--out", "s", "--mix", "65"], "--mix"),
    (["canonicalize", "zoo", "--out", "c", "--max-rounds", "0"], "--max-rounds"),
    (["canonicalize", "zoo", "--out", "c", "--tol", "-1"], "--tol"),
    (["align", "a.safetensors", "b.safetensors", "--out", "x", "--max-iter", "0"],
     "--max-iter"),
    (["align", "a.safetensors", "b.safetensors", "--out", "x", "--restarts", "0"],
     "--restarts"),
    (["lmc", "a.safetensors", "b.safetensors", "--out", "r", "--restarts", "100000"],
     "--restarts"),
    (["align", "a.safetensors", "b.safetensors", "--out", "x", "--seed", "-1"], "--seed"),
    (["merge", "a.safetensors", "b.safetensors", "--out", "x", "--method", "ste", "--steps",
      "0"], "--steps"),
    (["zoo", "train", "--arch", ARCH, "--models", "0", "--out", "z"], "--models"),
    (["zoo", "train", "--arch", ARCH, "--models", "1", "--epochs", "0", "--out", "z"],
     "--epochs"),
    (["zoo", "train", "--arch", ARCH, "--models", "1", "--batch-size", "0", "--out", "z"],
     "--batch-size"),
    (["zoo", "train", "--arch", ARCH, "--models", "1", "--lr", "inf", "--out", "z"], "--lr"),
    (["zoo", "train", "--arch", ARCH, "--models", "1", "--momentum", "1.5", "--out", "z"],
     "--momentum"),
    (["zoo", "train", "--arch", ARCH, "--models", "1", "--chunk-size", "0", "--out", "z"],
     "--chunk-size"),
    (["spec", ARCH, "--input-shape", "1,3,32,32"], "does not accept inputs"),
    (["spec", ARCH, "--input-shape", "100000,100000,100000"], "--input-shape"),
    (["spec", ARCH, "--input-shape", "0,64"], "--input-shape"),
    (["zoo", "train", "--arch", "mlp:20-8-10", "--models", "1", "--out", "z"],
     "does not accept"),
    (["zoo", "train", "--arch", ARCH, "--models", "1", "--dataset", "nope", "--out", "z"],
     "unknown dataset"),
    (["nosuchverb"], "invalid choice"),
    (["align", "a.safetensors"], "required"),
    (["align", "a.safetensors", "b.safetensors", "--out", "x", "--device", "tpu"],
     "--device"),
    (["canonicalize", "zoo", "--out", "c", "--device", "cuda:x"], "--device"),
    (["lmc", "a.safetensors", "b.safetensors", "--out", "r", "--device", "cuda:99"],
     "--device"),
    (["merge", "a.safetensors", "b.safetensors", "--out", "x", "--device", "gpu0"],
     "--device"),
])
def test_numbers_and_shapes(w, capsys, args, match):
    refused(w, args, capsys, match)


def test_activation_matching_with_data_that_does_not_fit(w, capsys):
    for name in ("a", "b"):
        state = build("mlp:20-8-10").state_dict()
        save_checkpoint(w / f"{name}.safetensors", state, "mlp:20-8-10", {"dataset": "digits"})
    refused(w, ["align", "a.safetensors", "b.safetensors", "--method", "am", "--out",
                "x.safetensors"], capsys, "does not accept")


def test_non_finite_weights_in_a_zoo_before_generate_fit(w, capsys):
    path = w / "zoo" / "models" / "s0001.safetensors"
    state, arch, meta = read_checkpoint(path)
    state[next(iter(state))].view(-1)[0] = float("nan")
    save_checkpoint(path, state, arch, meta)
    refused(w, CODE_CASES["generate-fit"](w), capsys, "non-finite")


def test_different_architectures_are_refused(w, capsys):
    save_checkpoint(w / "b.safetensors", build("mlp:64-9-10").state_dict(), "mlp:64-9-10")
    refused(w, ["merge", "a.safetensors", "b.safetensors", "--out", "m.safetensors"], capsys,
            "shape")


# ------------------------------------------------------------ 6. errors name real flags
@pytest.mark.parametrize("verb", [["align"], ["merge"], ["lmc"], ["zoo", "import"]])
def test_pt_state_dict_without_arch_names_the_flag_that_exists(w, capsys, verb):
    line = refused(w, [*verb, "a.pt", "b.pt", "--out", "x.safetensors"], capsys, "--arch")
    assert main([*verb, "--help"]) == 0
    assert "--arch" in capsys.readouterr().out, line


def test_pt_state_dicts_become_a_zoo_that_canonicalizes(w, capsys):
    assert main(["zoo", "import", "a.pt", "b.pt", "--arch", ARCH, "--dataset", "digits",
                 "--out", "imported", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["models"] == 2 and 0 < res["mean_test_acc"] <= 1
    assert [e["id"] for e in json.loads((w / "imported" / "manifest.json").read_text())
            ["models"]] == ["a", "b"]
    assert main(["canonicalize", "imported", "--out", "canon", "--no-progress"]) == 0
    refused(w, ["zoo", "import", "a.pt", "--arch", ARCH, "--out", "imported"], capsys,
            "already holds a zoo")


def test_pt_state_dicts_align_and_merge_with_arch(w, capsys):
    assert main(["align", "a.pt", "b.pt", "--arch", ARCH, "--out", "x.safetensors"]) == 0
    assert read_checkpoint(w / "x.safetensors")[1] == ARCH
    assert main(["merge", "a.pt", "b.pt", "--arch", ARCH, "--method", "mean", "--dataset",
                 "digits", "--out", "m.safetensors"]) == 0
    assert main(["spec", "a.pt", "--arch", ARCH, "--json"]) == 0
    assert main(["lmc", "a.pt", "b.pt", "--arch", ARCH, "--points", "3", "--out", "r",
                 "--dataset", "digits"]) == 0
    capsys.readouterr()


def test_missing_integer_buffers_are_filled_like_load_state_dict(tmp_path, capsys):
    ref = "resnet20?width=1&in_chans=1&num_classes=10"
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        state = {k: v for k, v in build(ref).state_dict().items()
                 if not k.endswith("num_batches_tracked")}
        torch.save(state, tmp_path / f"{name}.pt")
    out = tmp_path / "x.safetensors"
    assert main(["align", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--arch", ref,
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "num_batches_tracked" in err and "filled" in err
    state = {k: v for k, v in build(ref).state_dict().items() if k != "fc.weight"}
    torch.save(state, tmp_path / "a.pt")  # a missing floating tensor stays an error
    refused(tmp_path / "work-none", ["align", str(tmp_path / "a.pt"),
                                     str(tmp_path / "b.pt"), "--arch", ref, "--out",
                                     str(tmp_path / "y.safetensors")], capsys, "fc.weight")
