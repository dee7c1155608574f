"""The streamed Gram-PCA encoding equals the in-memory SVD one; it is exact on every training
model, survives a save / load round trip with a lazily read basis, and refuses bad input.
The audit's affine-span numbers on hand-made cases."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from weightspace.arch import build
from weightspace.checkpoint import save_checkpoint
from weightspace.generate import Encoding, EncodingError
from weightspace.generate.audit import affine_span
from weightspace.generate.encoding import DiskBasis

BN = "resnet20?width=1&in_chans=1"      # BatchNorm: constant tensors, integer buffers


def _zoo(tmp_path, arch, n, seed=0, noise=0.3):
    """n models around one random init (a spectrum with distinct singular values),
    written as checkpoints; returns (paths, states)."""
    torch.manual_seed(seed)
    base = build(arch).state_dict()
    paths, states = [], []
    for i in range(n):
        s = {k: v + noise * (1 + i % 3) * torch.randn_like(v) * (v.float().std() + 1e-3)
             if v.is_floating_point() and k.endswith("weight") and v.dim() > 1 else v.clone()
             for k, v in base.items()}
        paths.append(tmp_path / f"m{i}.safetensors")
        save_checkpoint(paths[-1], s, arch)
        states.append(load_file(str(paths[-1])))
    return paths, states


def _close(a: dict, b: dict, tol=1e-5):
    for k in a:
        scale = float(b[k].float().abs().max()) + 1e-6
        assert (a[k].float() - b[k].float()).abs().max() / scale < tol, k


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors on a shared 2-core machine: one intra-op thread is ~30x faster than
    two spinning ones under load (restored after the module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def bn_zoo(tmp_path_factory):
    return _zoo(tmp_path_factory.mktemp("encz"), BN, 7)


@pytest.mark.parametrize("chunk", [1 << 18, 37])
def test_streamed_gram_pca_equals_direct_svd(bn_zoo, tmp_path, chunk):
    paths, states = bn_zoo
    direct = Encoding.fit(BN, states, pca=True)
    stream = Encoding.fit_streaming(BN, paths, pca=True, workdir=tmp_path, chunk=chunk)
    assert list(tmp_path.iterdir()) == []            # the basis file is unlinked at once
    assert stream.keys == direct.keys and stream.shapes == direct.shapes
    assert stream.signature() == direct.signature() and stream.dim == 6
    assert set(stream.ints) == set(direct.ints)
    torch.testing.assert_close(stream.mean, direct.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stream.std, direct.std, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(stream.center, direct.center, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stream.scale, direct.scale, rtol=1e-6, atol=1e-9)
    codes_s = torch.stack([stream.encode(s) for s in states])
    codes_d = torch.stack([direct.encode(s) for s in states])
    # distinct singular values: the codes agree up to one sign per component
    sign = torch.sign((codes_s * codes_d).sum(0))
    torch.testing.assert_close(codes_s, codes_d * sign, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(stream.zoo_codes, codes_s, rtol=1e-4, atol=1e-4)
    # the same decode of any code (signs carried over), and exact on every training model
    z = torch.randn(5, stream.dim, generator=torch.Generator().manual_seed(1))
    for c in z:
        _close(stream.decode(c), direct.decode(c * sign))
    for s, cs in zip(states, codes_s):
        _close(stream.decode(cs), s)
        _close(direct.decode(direct.encode(s)), s)


def test_save_load_round_trip_reads_basis_lazily(bn_zoo, tmp_path):
    paths, states = bn_zoo
    enc = Encoding.fit_streaming(BN, paths, pca=True, workdir=tmp_path)
    enc.save(tmp_path / "a.safetensors")
    again = Encoding.load(tmp_path / "a.safetensors")
    assert isinstance(again.basis, DiskBasis) and again.basis.dtype == torch.float32
    again.save(tmp_path / "b.safetensors")            # from the lazy basis: same bytes
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:  # valid safetensors
        assert {"basis", "center", "scale", "mix", "mean", "std"} <= set(f.keys())
        json.loads(f.metadata()["weightspace.encoding"])
    for s in states:
        _close(again.decode(again.encode(s)), s)
        torch.testing.assert_close(again.encode(s), enc.encode(s))
    # in-memory encodings (float64 basis) go through the same writer and reader
    direct = Encoding.fit(BN, states, pca=True)
    direct.save(tmp_path / "d.safetensors")
    d2 = Encoding.load(tmp_path / "d.safetensors")
    for s in states:
        _close(d2.decode(d2.encode(s)), s, tol=1e-6)
    full = Encoding.fit_streaming(BN, paths, pca=False)
    full.save(tmp_path / "f.safetensors")
    f2 = Encoding.load(tmp_path / "f.safetensors")
    assert f2.basis is None and f2.signature() == Encoding.fit(BN, states).signature()
    _close(f2.decode(f2.encode(states[2])), states[2])


def test_zoo_weights_recover_each_training_model(bn_zoo, tmp_path):
    paths, states = bn_zoo
    for enc in (Encoding.fit_streaming(BN, paths, workdir=tmp_path),
                Encoding.fit(BN, states, pca=True)):
        w = torch.stack([enc.zoo_weights(c) for c in enc.zoo_codes])
        torch.testing.assert_close(w, torch.eye(len(states), dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        assert torch.allclose(enc.zoo_weights(torch.zeros(enc.dim)),
                              torch.full((len(states),), 1 / len(states), dtype=torch.float64))


def test_more_models_than_parameters(tmp_path):
    """Rank limited by D, not N: both fits keep D components and stay exact."""
    paths, states = _zoo(tmp_path, "mlp:2-2", 9, noise=1.0)
    stream = Encoding.fit_streaming("mlp:2-2", paths, workdir=tmp_path)
    direct = Encoding.fit("mlp:2-2", states, pca=True)
    assert stream.dim == direct.dim == 4      # the 2x2 weight varies; the bias does not
    for s in states:
        _close(stream.decode(stream.encode(s)), s, tol=1e-5)


def test_bad_checkpoints_are_refused_naming_the_file(bn_zoo, tmp_path):
    paths, states = bn_zoo
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, build("mlp:4-3").state_dict(), BN)
    with pytest.raises(EncodingError, match="other.safetensors: tensors differ"):
        Encoding.fit_streaming(BN, [paths[0], other])
    with pytest.raises(EncodingError, match="is for 'mlp:4-3'|encoding is for"):
        Encoding.fit_streaming("mlp:4-3", paths[:2])
    bad = dict(states[1])
    k = next(k for k, v in bad.items() if v.is_floating_point() and v.dim() == 4)
    bad[k] = bad[k].clone()
    bad[k][0, 0, 0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.safetensors", bad, BN)
    with pytest.raises(EncodingError, match=f"nan.safetensors: tensor '{k}' holds non-finite"):
        Encoding.fit_streaming(BN, [paths[0], tmp_path / "nan.safetensors"])
    with pytest.raises(EncodingError, match="empty zoo"):
        Encoding.fit_streaming(BN, [])
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(EncodingError, match="junk.safetensors: not a readable"):
        Encoding.fit_streaming(BN, [tmp_path / "junk.safetensors"])


def test_truncated_or_inconsistent_encoding_files_are_refused(bn_zoo, tmp_path):
    paths, _ = bn_zoo
    enc = Encoding.fit_streaming(BN, paths, workdir=tmp_path)
    enc.save(tmp_path / "e.safetensors")
    blob = (tmp_path / "e.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(blob[:-100])
    with pytest.raises(EncodingError, match="t.safetensors: not a weightspace encoding"):
        Encoding.load(tmp_path / "t.safetensors")
    t = load_file(str(tmp_path / "e.safetensors"))
    with safe_open(str(tmp_path / "e.safetensors"), framework="pt") as f:
        meta = f.metadata()
    from safetensors.torch import save_file
    save_file({**t, "mix": t["mix"][:, :2].contiguous()}, str(tmp_path / "m.safetensors"),
              metadata=meta)
    with pytest.raises(EncodingError, match="tensor 'mix' has shape"):
        Encoding.load(tmp_path / "m.safetensors")
    save_file({**t, "basis": t["basis"][:, :-1].contiguous()},
              str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(EncodingError, match="tensor 'basis' has shape"):
        Encoding.load(tmp_path / "b.safetensors")


# ------------------------------------------------------------------ the audit's span numbers
def test_affine_span_on_hand_made_cases():
    g = torch.Generator().manual_seed(0)
    zoo = torch.randn(6, 400, generator=g, dtype=torch.float64)
    n = len(zoo)
    mix = torch.tensor([0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64)
    extra = torch.tensor([2.0, -1.0, 0, 0, 0, 0], dtype=torch.float64)
    pts = torch.stack([zoo[3], zoo.mean(0), mix @ zoo, extra @ zoo,
                       zoo.mean(0) + torch.randn(400, generator=g, dtype=torch.float64)])
    s = affine_span(zoo, pts)
    assert s["residual"][0] < 1e-6 and abs(s["effective"][0] - 1) < 1e-6   # a zoo model
    assert s["residual"][1] == 0 and abs(s["effective"][1] - n) < 1e-6     # the zoo mean
    assert s["residual"][2] < 1e-6 and abs(s["effective"][2] - 2) < 1e-6
    assert abs(s["negative"][3] - 1) < 1e-6 and s["effective"][3] < 1      # extrapolation
    assert 0.9 < s["residual"][4] <= 1                # a random direction: off the span
    torch.testing.assert_close(s["weights"].sum(1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(s["weights"][0], torch.eye(n, dtype=torch.float64)[3],
                               atol=1e-8, rtol=0)
    # leave-one-out: random models are off the others' span; a duplicate is on it
    loo = affine_span(zoo)
    assert all(r > 0.9 for r in loo["residual"])
    assert all(float(w[i]) == 0 for i, w in enumerate(loo["weights"]))
    dup = affine_span(torch.cat([zoo, zoo[:1]]))
    assert dup["residual"][0] < 1e-6 and abs(dup["effective"][0] - 1) < 1e-6
    assert float(dup["weights"][0, n]) == pytest.approx(1, abs=1e-6)
