"""The mixability probe: a zoo built to be mixable (one shared initialisation, a few
epochs) and one built not to be (independent seeds, no alignment) get the right verdicts;
the CLI prints the table and writes the JSON report; the chooser records every candidate."""
import json

import pytest

from weightspace.cli.main import main
from weightspace.merge.mixing import MIX_TARGET, MixabilityReport
from weightspace.merge.probe import choose_canonicalization, probe_zoo
from weightspace.zoo import HParams, train_zoo

ARCH = "mlp:64-16-10"
HP = HParams(epochs=2, batch_size=64, lr=3e-3)


@pytest.fixture(scope="module")
def zoos(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixzoos")
    train_zoo(root / "shared", ARCH, "digits", HP, models=4, shared_init=0, batched=True,
              progress=False)
    train_zoo(root / "indep", ARCH, "digits", HP, models=4, batched=True, progress=False)
    return root


def test_shared_init_zoo_is_mixable_independent_one_is_not(zoos):
    good = probe_zoo(zoos / "shared", "none", draws=3, seed=0)
    bad = probe_zoo(zoos / "indep", "none", draws=3, seed=0)
    assert good.correction == bad.correction == "repair"  # no-norm MLP: REPAIR
    assert good.verdict == "mixable" and good.loss <= MIX_TARGET and good.advice is None
    assert bad.verdict == "not mixable" and bad.loss > 5 * MIX_TARGET
    # one plain line naming the levers not yet in use
    assert "near-copies" in bad.advice and "\n" not in bad.advice
    assert "activation-matching" in bad.advice and "shared-initialisation" in bad.advice
    assert "shared-initialisation" not in (probe_zoo(zoos / "shared", "none", target=-1.0)
                                           .advice or "shared-initialisation")
    # deterministic, and the report survives JSON
    again = probe_zoo(zoos / "indep", "none", draws=3, seed=0)
    assert again.mixtures == bad.mixtures and again.singles == bad.singles
    back = MixabilityReport.from_json(bad.to_json())
    assert back.mixtures == bad.mixtures and back.verdict == bad.verdict
    assert len(bad.mixtures["2"]) == 3 and len(set(map(tuple, [bad.mixtures["2"]]))) == 1


def test_cli_probe_prints_the_table_and_writes_json(zoos, tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["canonicalize", str(zoos / "indep"), "--probe", "--method", "wm",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "single models" in text and "mean of 4" in text and "verdict:" in text
    rep = json.loads(out.read_text())
    assert rep["method"] == "wm" and set(rep["mixtures"]) == {"2", "4"}
    assert not (zoos / "indep" / "probe.json").exists()
    assert main(["canonicalize", str(zoos / "shared"), "--probe", "--as-is", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["method"] == "none" and rep["verdict"] == "mixable"
    assert main(["canonicalize", str(zoos / "indep")]) == 2
    assert "needs --out" in capsys.readouterr().err


def test_choose_canonicalization_records_every_candidate(zoos):
    rec = choose_canonicalization(zoos / "indep", candidates=("wm", "am"), draws=2)
    assert rec["chosen"] in ("wm", "am") and set(rec["reports"]) == {"wm", "am"}
    best = max(rec["reports"].values(), key=lambda r: r["score"])
    assert rec["reports"][rec["chosen"]]["score"] == best["score"]


def test_the_chosen_canonical_zoo_is_kept_and_written_as_measured(zoos, tmp_path):
    """What the chooser measured is what gets written: the kept zoo equals a fresh
    canonicalization by the chosen method, and written it restores every original."""
    import torch

    from weightspace.canonicalize.zoo import canonical_states, restore, write_canonical
    from weightspace.checkpoint import read_checkpoint
    from weightspace.zoo import Zoo
    keep: dict = {}
    rec = choose_canonicalization(zoos / "indep", candidates=("none", "wm", "am"), draws=2,
                                  max_rounds=3, keep=keep)
    if rec["chosen"] == "none":
        assert "canonical" not in keep
        return
    kept = keep["canonical"]
    fresh = canonical_states(zoos / "indep", rec["chosen"], "barycenter", max_rounds=3,
                             progress=False, device="cpu")
    assert all(torch.equal(a[k], b[k]) for a, b in zip(kept.states, fresh.states) for k in a)
    write_canonical(kept, zoos / "indep", tmp_path / "c")
    m = Zoo(tmp_path / "c").read()
    assert m["canonicalization"]["method"] == rec["chosen"]
    for e in m["models"]:
        orig, _, _ = read_checkpoint(zoos / "indep" / e["file"])
        back = restore(tmp_path / "c", e["id"])
        assert all(torch.equal(back[k], orig[k]) for k in orig)


def test_the_advice_does_not_suggest_a_canonicalization_measured_no_better(zoos):
    rec = choose_canonicalization(zoos / "indep", candidates=("none", "am"), draws=2,
                                  max_rounds=2)
    for rep in rec["reports"].values():
        if rep["advice"]:
            assert "activation-matching" not in rep["advice"]
    alone = probe_zoo(zoos / "indep", "none", draws=2)
    assert "activation-matching" in alone.advice  # not compared: still a lever
