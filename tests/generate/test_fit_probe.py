"""generate fit measures the zoo's mixability before fitting: recorded in the generator's
config, and one plain line when mixtures lose more than the accuracy target."""
import json

from weightspace.cli.main import main
from weightspace.zoo import HParams, train_zoo


def test_fit_probes_mixability_and_says_so_before_fitting(tmp_path, capsys):
    zoo = tmp_path / "zoo"   # independent seeds, unaligned: mixtures of these are poor
    train_zoo(zoo, "mlp:64-32-10", "digits", HParams(epochs=4), models=4, progress=False)
    gen = tmp_path / "gen"
    assert main(["generate", "fit", str(zoo), "--out", str(gen), "--steps", "3", "--width",
                 "8", "--depth", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    rep = json.loads((gen / "config.json").read_text())["mixability"]
    assert len(rep["singles"]) == 4 and set(rep["mixtures"]) == {"2", "4"}
    assert rep["verdict"] == ("mixable" if rep["loss"] <= rep["target"] else "not mixable")
    if rep["verdict"] == "not mixable":
        assert rep["advice"] and rep["advice"] in err
    gen2 = tmp_path / "gen2"
    assert main(["generate", "fit", str(zoo), "--out", str(gen2), "--steps", "3", "--width",
                 "8", "--depth", "1", "--no-progress", "--no-probe"]) == 0
    assert json.loads((gen2 / "config.json").read_text())["mixability"] is None


def test_samples_corrected_by_repair_when_asked(tmp_path):
    """correction='repair' sets each sample's unit statistics to its code's mixture of the
    zoo's (folded into the weights): the samples change, the record says so; auto on a net
    without normalisation layers leaves them as decoded (none)."""
    import torch
    from safetensors.torch import load_file
    from weightspace.generate import SampleSettings, fit_generator, sample_zoo
    zoo = tmp_path / "zoo"
    train_zoo(zoo, "mlp:64-16-10", "digits", HParams(epochs=4), models=4, progress=False)
    fit_generator(zoo, tmp_path / "g", steps=3, width=8, depth=1, probe=False, progress=False)
    fixed = dict(method="euler", steps=1, guidance=1.0, mix=1)
    runs = {}
    for how in ("repair", "auto"):
        res = sample_zoo(tmp_path / "g", tmp_path / how, 2, settings=SampleSettings(
            correction=how, **fixed))
        m = json.loads((tmp_path / how / "manifest.json").read_text())["settings"]
        runs[how] = (m["correction"], load_file(str(tmp_path / how / "models" /
                                                    "g0000.safetensors")))
        assert res.mean_test_acc is not None
    assert runs["repair"][0] == "repair" and runs["auto"][0] == "none"
    a, b = runs["repair"][1], runs["auto"][1]
    assert any(not torch.equal(a[k], b[k]) for k in a)
