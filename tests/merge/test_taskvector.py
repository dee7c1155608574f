"""Task-vector merges: each method on hand-computable tensors, the recipe (mergekit's keys,
filters, gradients), the tensors that are never averaged, and the verb on files (bad input
is one line and writes nothing; a recipe and the equivalent flags give the same bytes)."""
import json
import math

import pytest
import torch

from weightspace.checkpoint import open_checkpoint, save_checkpoint
from weightspace.cli.main import main
from weightspace.merge.taskvector.base import TaskVectorError
from weightspace.merge.taskvector.methods import METHODS, get_tv_method
from weightspace.merge.taskvector.recipe import Recipe, evaluate, layer_positions
from weightspace.merge.taskvector.stream import merge_states, merge_tensor

T = torch.tensor


# ---------------------------------------------------------------- methods, by hand
def test_ties_elects_the_sign_and_averages_only_the_agreeing_entries():
    base = torch.zeros(4)
    x = T([1.0, -2.0, 3.0, 0.0])
    y = T([-3.0, -1.0, 1.0, 2.0])
    out = merge_tensor("ties", [base, x, y], base=0, weight=1.0, density=1.0)
    # entry 0: sum -2 -> sign -, only y agrees: -3; entry 1: both -, mean -1.5;
    # entry 2: both +, mean 2; entry 3: x is 0 (no sign), y alone: 2
    assert torch.equal(out, T([-3.0, -1.5, 2.0, 2.0]))
    # weights weigh the election and the mean: x twice as heavy wins entry 0
    out = merge_tensor("ties", [base, x, y], base=0, weight=[0.0, 2.0, 0.5], density=1.0)
    assert out[0] == pytest.approx(1.0)          # (2 * 1) / 2
    # density keeps each task vector's largest entries only
    out = merge_tensor("ties", [base, x, y], base=0, weight=1.0, density=0.25)
    assert torch.equal(out, T([-3.0, 0.0, 3.0, 0.0]))  # x keeps 3, y keeps -3


def test_task_arithmetic_with_one_model_and_lambda_one_returns_it():
    g = torch.Generator().manual_seed(0)
    base, ft = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert torch.allclose(merge_tensor("task_arithmetic", [base, ft], base=0, weight=1.0),
                          ft, atol=1e-6)
    out = merge_tensor("task_arithmetic", [base, ft, ft], base=0, weight=[1.0, 0.5, 0.25],
                       **{"lambda": 2.0})
    assert torch.allclose(out, base + 2 * 0.75 * (ft - base), atol=1e-5)


def test_dare_keeps_density_of_entries_rescaled_and_is_seeded():
    base = torch.zeros(200_000)
    delta = torch.ones(200_000)
    out = merge_tensor("dare_linear", [base, delta], base=0, weight=1.0, density=0.3,
                       seed=7, name="w")
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.005     # ~ 4.6 sigma
    # rescale (mergekit's): the kept entries restore the task vector's L1 norm, which for
    # a constant task vector is 1 / keep-rate ~ 1 / density
    assert out.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    assert out[kept].unique().numel() == 1
    assert out[kept][0].item() == pytest.approx(1 / 0.3, rel=0.02)
    again = merge_tensor("dare_linear", [base, delta], base=0, weight=1.0, density=0.3,
                         seed=7, name="w")
    other = merge_tensor("dare_linear", [base, delta], base=0, weight=1.0, density=0.3,
                         seed=8, name="w")
    assert torch.equal(out, again) and not torch.equal(out, other)
    no_rescale = merge_tensor("dare_ties", [base, delta], base=0, weight=1.0, density=0.3,
                              rescale=False, seed=7, name="w")
    assert torch.equal(no_rescale != 0, kept) and no_rescale.max() == 1


def test_breadcrumbs_drops_the_largest_gamma_and_the_smallest():
    base = torch.zeros(100)
    delta = torch.arange(1.0, 101.0)[torch.randperm(100, generator=torch.Generator()
                                                    .manual_seed(0))]
    out = merge_tensor("breadcrumbs", [base, delta], base=0, weight=1.0, density=0.5,
                       gamma=0.1)
    kept = sorted(out[out != 0].tolist())
    assert kept == [float(v) for v in range(41, 91)]  # 50 kept, top 10 dropped


def test_slerp_endpoints_parallel_and_orthogonal():
    a, b = T([1.0, 0.0, 0.0]), T([0.0, 2.0, 0.0])
    assert torch.allclose(merge_tensor("slerp", [a, b], base=0, t=0.0), a)
    assert torch.allclose(merge_tensor("slerp", [a, b], base=0, t=1.0), b, atol=1e-6)
    # orthogonal: sin(theta/2)/sin(theta) = 1/sqrt(2) on each endpoint
    mid = merge_tensor("slerp", [a, b], base=0, t=0.5)
    assert torch.allclose(mid, (a + b) / math.sqrt(2), atol=1e-6)
    # the base is the t = 0 end whichever position it has
    assert torch.allclose(merge_tensor("slerp", [b, a], base=1, t=0.0), a)
    # parallel (and antiparallel) vectors are interpolated linearly
    for c in (3 * a, -a):
        assert torch.allclose(merge_tensor("slerp", [a, c], base=0, t=0.25), 0.75 * a + 0.25 * c)


def test_model_stock_two_orthogonal_fine_tunes_give_the_base():
    base = T([1.0, 1.0, 1.0])
    x, y = base + T([1.0, 0.0, 0.0]), base + T([0.0, 1.0, 0.0])
    assert torch.allclose(merge_tensor("model_stock", [base, x, y], base=0), base)
    # identical fine-tunes (cos 1): t = 2 / 2 = 1, the fine-tune itself
    assert torch.allclose(merge_tensor("model_stock", [base, x, x], base=0), x)
    # at 60 degrees: cos 1/2, t = 2 * 0.5 / 1.5 = 2/3 of the way to the average
    z = base + T([0.5, math.sqrt(3) / 2, 0.0])
    out = merge_tensor("model_stock", [base, x, z], base=0)
    assert torch.allclose(out, base + (2 / 3) * ((x + z) / 2 - base), atol=1e-6)


def test_linear_is_the_weighted_average():
    x, y = T([1.0, 2.0]), T([3.0, 6.0])
    assert torch.equal(merge_tensor("linear", [x, y], weight=1.0), T([2.0, 4.0]))
    assert torch.allclose(merge_tensor("linear", [x, y], weight=[3.0, 1.0]), T([1.5, 3.0]))
    assert torch.equal(merge_tensor("linear", [x, y], weight=1.0, normalize=False),
                       T([4.0, 8.0]))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_merges_copies_of_one_model_into_it(method):
    """The registry as a test matrix: any merge of identical inputs is that input."""
    m = get_tv_method(method)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    n = m.max_inputs or 3
    params = {p.name: (0.5 if p.name in ("t", "density") else 1.0)
              for p in m.params if p.required or p.name == "density"}
    out = merge_tensor(method, [x.clone() for _ in range(n)],
                       base=0 if m.base == "required" else None, **params)
    assert torch.allclose(out, x, atol=1e-6)


@pytest.mark.parametrize("kw,msg", [
    (dict(density=0.0), "density must be in (0, 1]"),
    (dict(density=1.5), "density must be in (0, 1]"),
    (dict(gamma=2.0), "no parameter 'gamma'"),
])
def test_bad_parameters_are_refused(kw, msg):
    with pytest.raises(TaskVectorError, match=msg.replace("(", r"\(").replace("]", r"\]")):
        merge_tensor("ties", [torch.zeros(3)] * 2, base=0, weight=1.0, **kw)


# ---------------------------------------------------------------- recipes
def _recipe(**kw):
    d = {"merge_method": "ties", "base_model": "b", "models": [
        {"model": "x", "parameters": {"weight": 1.0}}, {"model": "y"}],
        "parameters": {"weight": 0.5, "density": 0.5}, **kw}
    return Recipe.from_dict(d)


def test_recipe_resolves_filters_gradients_and_model_settings_like_mergekit():
    r = _recipe(parameters={"weight": 0.5, "density": [
        {"filter": "attn", "value": [0.2, 1.0]}, {"value": 0.9}]})
    assert r.inputs[-1].model == "b" and r.base_index == 2  # the base is added last
    shared, per = r.resolve("blocks.1.attn.qkv.weight", 0.5)
    assert per[0] == {"weight": 1.0, "density": pytest.approx(0.6)}  # model's own weight
    assert per[1]["weight"] == 0.5 and per[2] == {}                  # the base has none
    _, per = r.resolve("blocks.1.mlp.fc1.weight", 0.5)
    assert per[1]["density"] == 0.9
    assert shared == {"normalize": True, "lambda": 1.0, "int8_mask": False,
                      "rescale": False}
    assert evaluate([0.0, 1.0, 0.0], "x", 0.25) == pytest.approx(0.5)
    t = layer_positions(["embed.weight", "blocks.0.w", "blocks.1.w", "blocks.2.w",
                         "blocks.10.w", "head.weight"])
    assert t == {"embed.weight": 0.0, "blocks.0.w": 0.0, "blocks.1.w": 1 / 3,
                 "blocks.2.w": 2 / 3, "blocks.10.w": 1.0, "head.weight": 0.0}


@pytest.mark.parametrize("change,msg", [
    (dict(merge_method="tie"), "unknown task-vector merge method 'tie'"),
    (dict(base_model=None), "needs a base model"),
    (dict(parameters={"density": 0.5}), "model 'y' has no 'weight'"),
    (dict(parameters={"weight": 1.0, "density": 0.0}), "density must be in"),
    (dict(parameters={"weight": 1.0, "t": 0.5}), "has no parameter 't'"),
    (dict(slices=[]), "layer-range merges"),
    (dict(merge_dtype="float32"), "unknown key 'merge_dtype'"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(weightspace={"align": "xx"}), "weightspace.align must be one of"),
])
def test_recipe_refuses_bad_input_in_one_line(change, msg):
    with pytest.raises(TaskVectorError, match=msg) as e:
        _recipe(**change)
    assert "\n" not in str(e.value)


def test_language_model_keys_are_ignored_with_a_note():
    r = _recipe(tokenizer_source="base", chat_template="chatml")
    assert len(r.notes) == 2 and "tokenizer_source" in r.notes[0]
    assert Recipe.from_dict(r.to_dict()).to_dict() == r.to_dict()


# ---------------------------------------------------------------- tensors never averaged
def _bn_states():
    g = torch.Generator().manual_seed(0)
    base = {"conv.weight": torch.randn(4, 3, generator=g),
            "bn.weight": torch.ones(4), "bn.running_mean": torch.zeros(4),
            "bn.running_var": torch.ones(4), "bn.num_batches_tracked": T(5),
            "head.weight": torch.randn(10, 4, generator=g)}
    fts = []
    for k in range(2):
        s = {n: (v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v + 3)
             for n, v in base.items()}
        s["head.weight"] = torch.randn(3 + k, 4, generator=g)  # a head per task
        fts.append(s)
    return base, fts


def test_bn_statistics_and_integer_buffers_come_from_the_base_heads_are_refused():
    base, fts = _bn_states()
    r = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": "b",
                          "models": [{"model": "x"}, {"model": "y"}],
                          "parameters": {"weight": 1.0}})
    with pytest.raises(TaskVectorError, match=r"'head.weight' has different shapes "
                                              r"\(\[3, 4\] in x, \[4, 4\] in y, \[10, 4\]"):
        merge_states(r, [*fts, base])
    r = Recipe.from_dict({**r.to_dict(), "weightspace": {"heads": "base"}})
    out, rep = merge_states(r, [*fts, base])
    for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "head.weight"):
        assert torch.equal(out[k], base[k]), k
    assert rep["heads_from_base"] == ["head.weight"] and rep["merged"] == 2
    want = base["conv.weight"] + sum(f["conv.weight"] - base["conv.weight"] for f in fts)
    assert torch.allclose(out["conv.weight"], want, atol=1e-6)


# ---------------------------------------------------------------- the verb on files
ARCH = "mlp:64-16-10"


@pytest.fixture
def ckpts(tmp_path):
    from weightspace.arch import build
    torch.manual_seed(0)
    base = build(ARCH).state_dict()
    save_checkpoint(tmp_path / "base.safetensors", base, ARCH, {"dataset": "digits"})
    for i in range(3):
        s = {k: v + 0.05 * torch.randn_like(v) for k, v in base.items()}
        save_checkpoint(tmp_path / f"ft{i}.safetensors", s, ARCH, {"dataset": "digits"})
    return tmp_path


RECIPE = """merge_method: dare_ties
base_model: base.safetensors
models:
  - model: ft0.safetensors
    parameters: {density: 0.4}
  - model: ft1.safetensors
    parameters: {density: 0.6}
  - model: ft2.safetensors
    parameters: {density: 0.8}
parameters:
  weight: 0.7
  lambda: 1.2
weightspace: {seed: 3, align: none, bn: base, heads: refuse, dataset: null}
"""


def test_recipe_and_equivalent_flags_give_the_same_bytes(ckpts, monkeypatch, capsys):
    monkeypatch.chdir(ckpts)
    (ckpts / "merge.yaml").write_text(RECIPE)
    assert main(["merge", "--recipe", "merge.yaml", "--out", "a.safetensors"]) == 0
    assert main(["merge", "ft0.safetensors", "ft1.safetensors", "ft2.safetensors", "--base",
                 "base.safetensors", "--method", "dare_ties", "--density", "0.4,0.6,0.8",
                 "--weight", "0.7", "--lambda", "1.2", "--seed", "3",
                 "--out", "b.safetensors"]) == 0
    assert (ckpts / "a.safetensors").read_bytes() == (ckpts / "b.safetensors").read_bytes()
    err = capsys.readouterr().err
    assert "defaults: normalize=False, int8_mask=False, rescale=True" in err
    with open_checkpoint(ckpts / "a.safetensors") as ck:  # the output keeps its recipe
        rec = ck.meta["merged"]["recipe"]
        assert ck.arch == ARCH and rec["merge_method"] == "dare_ties"
        assert Recipe.from_dict(rec).to_dict() == rec
    # the directory layout shows the recipe in its card
    assert main(["merge", "--recipe", "merge.yaml", "--out", "outdir"]) == 0
    assert "merge_method: dare_ties" in (ckpts / "outdir" / "README.md").read_text()


@pytest.mark.parametrize("args,msg", [
    (["--method", "ties", "--density", "0", "--base", "base.safetensors"],
     "density must be in (0, 1]"),
    (["--method", "ties"], "needs a base model"),
    (["--method", "ties", "--base", "missing.safetensors"], "missing.safetensors"),
    (["--method", "ties", "--base", "other.safetensors"], "different shapes"),
    (["--method", "slerp", "--base", "base.safetensors", "--t", "0.5"],
     "takes exactly 2 models"),
    (["--method", "mergemany", "--density", "0.5"], "--density is for task-vector"),
])
def test_bad_merges_are_one_line_and_write_nothing(ckpts, monkeypatch, capsys, args, msg):
    from weightspace.arch import build
    monkeypatch.chdir(ckpts)
    save_checkpoint("other.safetensors", build("mlp:64-8-10").state_dict(), "mlp:64-8-10")
    rc = main(["merge", "ft0.safetensors", "ft1.safetensors", *args, "--out", "o/m.safetensors"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and msg in err[-1] and err[-1].startswith("weightspace merge: error:")
    assert not (ckpts / "o").exists()


def test_align_finds_the_identity_for_fine_tunes_and_undoes_a_permutation(ckpts):
    from weightspace.merge.taskvector.files import merge_recipe
    from weightspace.symmetry import apply, random_perms, spec
    with open_checkpoint(ckpts / "ft1.safetensors") as ck:
        ft1 = ck.state_dict()
    permuted = apply(spec(ARCH), random_perms(spec(ARCH), seed=1), ft1)
    save_checkpoint(ckpts / "ft1p.safetensors", permuted, ARCH)
    d = {"merge_method": "task_arithmetic", "base_model": str(ckpts / "base.safetensors"),
         "parameters": {"weight": 0.5}, "weightspace": {"align": "wm"}}
    plain = Recipe.from_dict({**d, "models": [str(ckpts / "ft0.safetensors"),
                                              str(ckpts / "ft1.safetensors")]})
    rep = merge_recipe(plain, ckpts / "plain.safetensors")
    assert [r["units_moved"] for r in rep["align"]["models"]] == [0, 0]
    perm = Recipe.from_dict({**d, "models": [str(ckpts / "ft0.safetensors"),
                                             str(ckpts / "ft1p.safetensors")]})
    rep = merge_recipe(perm, ckpts / "perm.safetensors")
    assert rep["align"]["models"][1]["units_moved"] > 0
    with open_checkpoint(ckpts / "plain.safetensors") as a, \
            open_checkpoint(ckpts / "perm.safetensors") as b:
        for k in a.keys():
            assert torch.allclose(a.get(k), b.get(k), atol=1e-6), k
    assert json.loads(json.dumps(rep))["align"]["method"] == "wm"


def test_della_keeps_entries_by_magnitude_rank_within_density_plus_minus_epsilon():
    base = torch.zeros(4, 20_000)
    delta = torch.arange(1.0, 20_001.0).repeat(4, 1)  # every row ranked the same way
    out = merge_tensor("della_linear", [base, delta], base=0, weight=1.0, density=0.5,
                       epsilon=0.2, rescale=False, seed=1, name="w")
    kept = (out != 0).float()
    assert abs(kept[:, :2000].mean().item() - 0.32) < 0.02   # smallest: ~ 0.3
    assert abs(kept[:, -2000:].mean().item() - 0.68) < 0.02  # largest: ~ 0.7
    assert abs(kept.mean().item() - 0.5) < 0.01
    with pytest.raises(TaskVectorError, match="density \\+/- epsilon must lie in"):
        merge_tensor("della", [base, delta], base=0, weight=1.0, density=0.9, epsilon=0.2)


def test_bn_reset_recomputes_statistics_and_heads_are_recorded(tmp_path):
    from weightspace.arch import build
    from weightspace.functional import recalibrated
    from weightspace.merge.taskvector.files import merge_recipe
    from weightspace.zoo import load_dataset
    arch = "resnet20?width=1&in_chans=1"
    torch.manual_seed(0)
    base = build(arch).state_dict()
    paths = []
    for i in range(2):
        s = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in base.items()}
        paths.append(str(tmp_path / f"ft{i}.safetensors"))
        save_checkpoint(paths[-1], s, arch, {"dataset": "digits"})
    save_checkpoint(tmp_path / "base.safetensors", base, arch, {"dataset": "digits"})
    d = {"merge_method": "ties", "base_model": str(tmp_path / "base.safetensors"),
         "models": paths, "parameters": {"weight": 1.0, "density": 0.5}}
    merge_recipe(Recipe.from_dict(d), tmp_path / "plain.safetensors")
    rep = merge_recipe(Recipe.from_dict({**d, "weightspace": {"bn": "reset"}}),
                       tmp_path / "reset.safetensors")
    bn = [k for k in base if k.endswith("running_mean")]
    assert bn and set(bn) <= set(rep["from_base"])
    with open_checkpoint(tmp_path / "plain.safetensors") as a, \
            open_checkpoint(tmp_path / "reset.safetensors") as b:
        plain, reset = a.state_dict(), b.state_dict()
    assert all(torch.equal(plain[k], base[k]) for k in bn)  # from the base
    x = load_dataset("digits")["train"][0][:2048]
    want = recalibrated(build(arch), plain, x)
    for k in plain:
        assert torch.allclose(reset[k].float(), want[k].float(), atol=1e-5), k
    assert not torch.equal(reset[bn[0]], base[bn[0]])


def test_della_on_single_entry_rows_keeps_them_at_density():
    out = merge_tensor("della", [torch.zeros(1, 1, 64), torch.ones(1, 1, 64)], base=0,
                       weight=1.0, density=0.5, epsilon=0.1, rescale=False, seed=2)
    assert 0.3 < (out != 0).float().mean().item() < 0.7
