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
