import pytest
import torch
from torch import nn

from weightspace.arch import (ArchError, build, code_allowed, input_shape, list_archs, parse,
                              parse_value)


def test_values_parse_to_python_types():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("bn") == "bn"
    assert parse("resnet20?width=4&norm=ln").kwargs == {"width": 4, "norm": "ln"}


@pytest.mark.parametrize("ref", [
    "mlp:64-128-128-10", "mlp:64-32-10?act=gelu&bias=false", "vgg11?width=0.25&norm=none",
    "vgg11?width=0.25&norm=ln&num_classes=7", "vgg11?width=0.125&in_chans=1&pools=3",
    "resnet20?width=2&norm=bn", "resnet20?norm=ln",
    "timm:resnet18?num_classes=10", "torchvision:resnet18?num_classes=10",
    "tests.factories:tiny_net?hidden=5",
])
def test_references_build_models_that_run(ref):
    model = build(ref, allow_code=ref.startswith("tests.")).eval()
    assert isinstance(model, nn.Module)
    shape = input_shape(ref, model)
    if ref.startswith(("timm", "torchvision", "tests.")):
        shape = (1, 3, 32, 32)
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape[0] == 1


def test_builtin_options_take_effect():
    assert build("vgg11?num_classes=7&width=0.25").classifier.out_features == 7
    assert build("resnet20?width=4").conv1.out_channels == 64
    assert build("resnet20?width=0.5").conv1.out_channels == 8
    assert isinstance(build("mlp:4-8-2?act=gelu")[2], nn.GELU)
    assert build("mlp:4-8-2?bias=false")[1].bias is None
    assert set(list_archs()) >= {"mlp", "vgg11", "resnet20"}


@pytest.mark.parametrize("ref,match", [
    ("resnet99", "unknown architecture"),
    ("resnet20?colour=red", "unknown option"),
    ("resnet20?norm=xx", "norm must be"),
    ("mlp:64-abc-10", "integers"),
    ("mlp", "needs a ':' argument"),
    ("timm:not_a_model_xyz", "timm has no model"),
    ("timm:resnet18?bogus_kwarg=1", "bad option|unexpected"),
    ("torchvision:not_a_model", "torchvision has no model"),
    ("", "empty"),
    ("timm:resnet18?pretrained=true", "would load weights"),
    ("timm:resnet18?checkpoint_path=/etc/passwd", "would load weights"),
    ("resnet20?width=abc", "option 'width' must be a number, got 'abc'"),
    ("resnet20?num_classes=2.5", "'num_classes' must be a whole number"),
    ("mlp:4-2?bias=3", "'bias' must be true or false"),
    ("vgg11?norm=3", "'norm' must be a word"),
    ("resnet20?width=0", "width must be positive"),
    ("torchvision:resnet18?weights=DEFAULT", "would load weights"),
])
def test_bad_references_are_clear_errors(ref, match):
    with pytest.raises(ArchError, match=match):
        build(ref)


def test_missing_user_code_is_a_clear_error():
    with pytest.raises(ArchError, match="cannot import"):
        build("nosuchpkg.mod:factory", allow_code=True)


def test_user_code_needs_permission_by_default_and_in_scope():
    for call in (lambda: build("os:getcwd"), lambda: build("os:getcwd", allow_code=False)):
        with pytest.raises(ArchError, match="refusing"):
            call()
    with code_allowed():
        with pytest.raises(ArchError, match="returned str"):  # imported and called
            build("os:getcwd")
    with pytest.raises(ArchError, match="refusing"):  # the scope ends with the block
        build("os:getcwd")


@pytest.mark.parametrize("ref", ["timm:resnet18?in_chans=1&num_classes=10",
                                 "timm:mobilenetv3_small_050?in_chans=1",
                                 "timm:convnext_atto?in_chans=2"])
def test_timm_example_input_has_the_channels_asked_for(ref):
    """The pretrained config says 3 channels; an ``in_chans`` in the reference wins."""
    model = build(ref).eval()
    shape = input_shape(ref, model)
    assert shape[1] == int(ref.split("in_chans=")[1][0])
    with torch.no_grad():
        assert model(torch.randn(shape)).shape[0] == 1
