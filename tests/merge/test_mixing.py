"""Weighted N-model mixtures with the statistic correction (BN reset / N-endpoint REPAIR),
and the note that REPAIR on an all-BatchNorm net is the BN reset."""
import pytest
import torch

from weightspace.arch import build
from weightspace.features import feature_stats
from weightspace.merge.mixing import MixError, mix, resolve_correction
from weightspace.merge.repair import bn_only, repairable
from weightspace.symmetry import spec as discover
from weightspace.zoo.train import init_model

LN = "vgg11?width=0.0625&norm=ln&in_chans=1&pools=3"
VIT = ("timm:vit_tiny_patch16_224?img_size=8&patch_size=2&in_chans=1&depth=1&num_classes=10"
       "&embed_dim=24&num_heads=3")


@pytest.mark.parametrize("arch", [LN, VIT])
def test_repair_restores_the_mixture_of_per_channel_statistics_exactly(digits, arch):
    """Three (untrained, so far apart) LayerNorm nets mixed 0.5 / 0.3 / 0.2: after REPAIR
    every correctable unit's mean and std on the calibration data are the weighted mix of
    the endpoints', to float tolerance; without it they are not (a ViT's too)."""
    sp = discover(arch, (1, 1, 8, 8))
    net = build(arch)
    states = [init_model(arch, s).state_dict() for s in (1, 2, 3)]
    w = [0.5, 0.3, 0.2]
    x = digits["train"][0][:512]
    targets = repairable(sp, net)
    assert targets and resolve_correction(net, sp) == "repair"
    ends = [feature_stats(net, s, targets, x) for s in states]
    goal = {n: (sum(wi * e[n][0] for wi, e in zip(w, ends)),
                sum(wi * e[n][1] for wi, e in zip(w, ends))) for n, _ in targets}
    fixed = feature_stats(net, mix(states, w, sp, "repair", x, net), targets, x)
    plain = feature_stats(net, mix(states, w, sp, "none", x, net), targets, x)
    for n, _ in targets:
        assert torch.allclose(fixed[n][0], goal[n][0], atol=1e-4, rtol=1e-4), n
        assert torch.allclose(fixed[n][1], goal[n][1], atol=1e-4, rtol=1e-4), n
    last = targets[-1][0]
    assert not torch.allclose(plain[last][1], goal[last][1], atol=1e-2, rtol=1e-2)


def test_bn_mix_is_recalibrated_and_bad_input_is_refused(digits):
    arch = "resnet20?width=0.25&in_chans=1"
    net = build(arch)
    sp = discover(arch, (1, 1, 8, 8))
    assert resolve_correction(net, sp) == "bn" and bn_only(sp, net)
    states = [init_model(arch, s).state_dict() for s in (1, 2)]
    out = mix(states, [0.5, 0.5], sp, "auto", digits, net)
    plain = mix(states, [0.5, 0.5], sp, "none", digits, net)
    assert not torch.equal(out["norm1.running_var"], plain["norm1.running_var"])
    assert torch.equal(out["conv1.weight"], plain["conv1.weight"])
    with pytest.raises(MixError, match="sum to 1"):
        mix(states, [0.5, 0.6], sp, "none", None, net)
    with pytest.raises(MixError, match="one per model"):
        mix(states, [1.0], sp, "none", None, net)
    with pytest.raises(MixError, match="needs train data"):
        mix(states, [0.5, 0.5], sp, "bn", None, net)


def test_merge_repair_on_a_batchnorm_net_says_it_is_the_bn_reset(tmp_path, capsys):
    from weightspace.checkpoint import save_checkpoint
    from weightspace.cli.main import main
    arch = "resnet20?width=0.25&in_chans=1"
    paths = []
    for s in (1, 2):
        p = tmp_path / f"m{s}.safetensors"
        save_checkpoint(p, init_model(arch, s).state_dict(), arch, {"dataset": "digits"})
        paths.append(str(p))
    assert main(["merge", *paths, "--method", "mean", "--repair",
                 "--out", str(tmp_path / "out.safetensors")]) == 0
    err = capsys.readouterr().err
    assert sum("REPAIR equals the BN reset" in line for line in err.splitlines()) == 1
