"""Properties of discovered permutation specs, parametrised over architectures (timm-style)."""
import copy

import pytest
import torch
from torch import nn

from weightspace.arch import build
from weightspace.symmetry import (Spec, SpecError, apply, invert, load_spec, random_perms,
                                  symmetry_of, verify, verify_and_repair)
from weightspace.symmetry.axes import STRUCTURAL

from ..conftest import rel_diff

# (reference, input shape, expected permutable fraction of hidden units, feature checks)
BUILTINS = [
    ("mlp:64-32-32-10", (2, 64)),
    ("mlp:64-32-10?act=gelu&bias=false", (2, 64)),
    ("vgg11?width=0.125&norm=bn", (2, 3, 32, 32)),
    ("vgg11?width=0.125&norm=ln", (2, 3, 32, 32)),
    ("vgg11?width=0.125&norm=none", (2, 3, 32, 32)),
    ("resnet20?width=1&norm=bn", (2, 3, 32, 32)),
    ("resnet20?width=1&norm=ln", (2, 3, 32, 32)),
]
ZOO = [
    ("timm:resnet18", (2, 3, 64, 64), {"residual"}),
    ("torchvision:resnet18", (2, 3, 64, 64), {"residual"}),
    ("timm:mobilenetv2_050", (2, 3, 64, 64), {"depthwise", "residual"}),      # inverted res.
    ("timm:mobilenetv3_small_050", (2, 3, 64, 64), {"depthwise"}),            # SE, hardswish
    ("timm:seresnet18", (2, 3, 64, 64), {"residual"}),                        # squeeze-excite
    ("timm:regnetx_002", (2, 3, 64, 64), {"grouped"}),                        # grouped convs
    ("timm:resnext26ts", (2, 3, 64, 64), {"grouped"}),
    ("timm:densenet121", (1, 3, 32, 32), {"concat"}),                         # dense concat
    ("timm:convnext_atto", (2, 3, 64, 64), {"residual", "depthwise"}),
    ("timm:mixer_s16_224?img_size=64", (2, 3, 64, 64), {"residual"}),         # MLP-Mixer
    ("timm:vit_tiny_patch16_224?img_size=32&patch_size=4", (2, 3, 32, 32), {"heads"}),
    ("timm:deit_tiny_patch16_224?img_size=32&patch_size=4", (2, 3, 32, 32), {"heads"}),
    ("timm:efficientnet_b0", (1, 3, 64, 64), {"depthwise"}),
    ("torchvision:mobilenet_v3_small", (2, 3, 64, 64), {"depthwise"}),
]


def _model(ref):
    torch.manual_seed(0)
    return build(ref).eval()


def _hidden_fixed(spec):
    return [f for f in spec.fixed if not f.reason.startswith(STRUCTURAL)
            and not f.reason.startswith("not used")]


def _check_function_preserved(model, spec, x, seed=7):
    perms = random_perms(spec, seed)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(apply(spec, perms, model.state_dict()))
    with torch.no_grad():
        y0, y1 = model(x), permuted(x)
    assert rel_diff(y0, y1) <= 1e-5
    # invert undoes it exactly
    back = apply(spec, invert(spec, perms), permuted.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v), k
    return perms


@pytest.mark.parametrize("ref,shape", BUILTINS, ids=[b[0] for b in BUILTINS])
def test_builtin_specs(ref, shape):
    model = _model(ref)
    x = torch.randn(shape)
    spec = symmetry_of(model, x)
    assert spec.verified, spec.failures
    assert spec.permutable_fraction == 1.0, _hidden_fixed(spec)
    assert not spec.failures
    _check_function_preserved(model, spec, x)
    # every hidden layer's output units are in some group
    grouped = {m for g in spec.groups for m in g.members}
    weights = [k for k, v in model.state_dict().items() if k.endswith("weight") and v.dim() >= 2]
    for k in weights[:-1]:
        assert f"{k}:0" in grouped, k


@pytest.mark.parametrize("ref,shape,features", ZOO, ids=[z[0] for z in ZOO])
def test_zoo_specs(ref, shape, features):
    model = _model(ref)
    x = torch.randn(shape)
    spec = symmetry_of(model, x)
    assert spec.verified and not spec.failures, spec.failures
    assert spec.permutable_fraction == 1.0, _hidden_fixed(spec)[:3]
    _check_function_preserved(model, spec, x)
    layouts = list(spec.layouts.values())
    if "residual" in features:  # one group spans many layers (the residual stream)
        assert max(len(g.members) for g in spec.groups) >= 8
    if "heads" in features:
        heads = [g for g in spec.groups if g.name.endswith(".heads")]
        assert heads and all(g.size == 3 for g in heads)
        kids = {g.parent: set() for g in spec.groups if g.parent}
        for g in spec.groups:
            if g.parent:
                kids[g.parent].add(g.name.rsplit(".", 1)[1])
        assert all(kids[h.name] == {"qk", "vo"} for h in heads)
    if "concat" in features:
        assert any(lay[0] == "cat" for lay in layouts)
    if "grouped" in features or "depthwise" in features:
        convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert convs


def test_planted_permutation_is_a_different_point_with_same_function():
    model = _model("resnet20?width=1")
    x = torch.randn(2, 3, 32, 32)
    spec = symmetry_of(model, x)
    perms = _check_function_preserved(model, spec, x)
    moved = apply(spec, perms, model.state_dict())
    assert not torch.equal(moved["conv1.weight"], model.state_dict()["conv1.weight"])


def test_multihead_attention_heads_are_blocks():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
            self.norm = nn.LayerNorm(16)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            x = x + self.attn(x, x, x, need_weights=False)[0]
            return self.fc(self.norm(x).mean(1))

    model = Block().eval()
    x = torch.randn(2, 5, 16)
    spec = symmetry_of(model, x)
    assert spec.verified
    names = {g.name: g for g in spec.groups}
    assert names["attn.heads"].size == 4
    assert names["attn.qk"].parent == "attn.heads" and names["attn.vo"].parent == "attn.heads"
    _check_function_preserved(model, spec, x)


def test_group_norm_permutes_groups_and_within_groups():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU(),
                          nn.Conv2d(16, 8, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(2, 3, 8, 8)
    model(x)
    spec = symmetry_of(model, x)
    assert spec.verified
    assert spec.layouts["1.weight:0"][0] == "prod"  # groups x channels-in-group
    # flatten after the conv: the linear's input is channel-major blocks of 4x4 positions
    assert spec.layouts["5.weight:1"] == ("prod", (("group", "3"), ("fixed", 4), ("fixed", 4)))
    _check_function_preserved(model, spec, x)


def test_unmodelled_op_is_fixed_and_reported():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=-1))  # order-dependent along units

    spec = symmetry_of(Odd().eval(), torch.randn(3, 4))
    assert spec.verified and spec.groups == []
    assert any("cumsum" in f.reason for f in spec.fixed)


def test_wrong_group_is_caught_and_set_to_identity():
    model = _model("mlp:8-6-6-2")
    x = torch.randn(4, 8)
    spec = symmetry_of(model, x)
    g0 = spec.groups[0]
    spec.layouts["3.weight:0"] = ("group", g0.name)   # not part of g0's symmetry
    g0.members.append("3.weight:0")
    assert not verify(model, spec, x).ok
    verify_and_repair(model, spec, x)
    assert spec.verified and spec.failures and g0.name in spec.failures[0]
    assert g0.name not in {g.name for g in spec.groups}


def test_json_round_trip_and_hand_edit():
    model = _model("resnet20?width=1&norm=ln")
    x = torch.randn(1, 3, 32, 32)
    spec = symmetry_of(model, x)
    again = load_spec(spec.to_json(), model, x)
    assert again.layouts == spec.layouts
    assert [g.name for g in again.groups] == [g.name for g in spec.groups]
    d = spec.to_dict()
    d["groups"][0]["members"] = [m for m in d["groups"][0]["members"] if "norm1.bias" not in m]
    import json
    with pytest.raises(SpecError, match="fails verification"):
        load_spec(json.dumps(d), model, x)


def test_spec_import_errors_name_the_culprit():
    model = _model("mlp:8-6-2")
    spec = symmetry_of(model, torch.randn(1, 8))
    d = spec.to_dict()
    d["shapes"]["1.weight"] = [7, 8]
    import json
    with pytest.raises(SpecError, match="1.weight"):
        Spec.from_json(json.dumps(d))
    with pytest.raises(SpecError, match="not valid JSON"):
        Spec.from_json("{nope")
    other = _model("mlp:8-5-2")
    with pytest.raises(SpecError, match=r"'1\.(weight|bias)'"):
        load_spec(spec.to_json(), other, torch.randn(1, 8))


@pytest.mark.slow
def test_resnet50_spec_is_complete():
    # Its speed is measured in scripts/benchmarks/spec_speed.py (a ratio), never asserted.
    model = _model("timm:resnet50")
    spec = symmetry_of(model, torch.randn(1, 3, 224, 224))
    assert spec.verified and spec.permutable_fraction == 1.0


def test_embedding_and_conv1d_join_the_residual_stream():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 12)
            self.pos = nn.Parameter(torch.randn(1, 7, 12))
            self.conv = nn.Conv1d(12, 12, 3, padding=1, groups=3)
            self.fc = nn.Linear(12, 4)

        def forward(self, idx):
            h = self.emb(idx) + self.pos
            h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
            return self.fc(h.mean(1))

    model = Seq().eval()
    x = torch.randint(0, 20, (2, 7))
    spec = symmetry_of(model, x)
    assert spec.verified and spec.permutable_fraction == 1.0
    stream = max(spec.groups, key=lambda g: len(g.members))
    assert {"emb.weight:1", "pos:2", "fc.weight:1"} <= set(stream.members)
    assert any(f.reason == "vocabulary" for f in spec.fixed)
    _check_function_preserved(model, spec, x)


def test_one_entry_point_for_a_model_a_reference_or_a_checkpoint(tmp_path):
    """symmetry_of takes a module (with an input), a reference or a checkpoint; spec (the
    CLI verb's name) is the same thing."""
    from weightspace.arch import build
    from weightspace.checkpoint import save_checkpoint
    from weightspace.symmetry import spec, symmetry_of
    ref = "mlp:64-32-16-10"
    model = build(ref)
    save_checkpoint(tmp_path / "m.safetensors", model, ref)
    by_module = symmetry_of(model, torch.randn(4, 64))
    for other in (symmetry_of(ref), symmetry_of(tmp_path / "m.safetensors"), spec(ref)):
        assert other.to_dict()["groups"] == by_module.to_dict()["groups"]
