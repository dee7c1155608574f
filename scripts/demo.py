"""The main job on the bundled default (digits): what weightspace can do today.

1. discover + verify the permutation symmetry of the built-in ResNet-20 and a timm ViT;
2. train a small MLP on digits, save it as a self-describing checkpoint, rebuild it from the
   file alone, and show that a random permutation from its spec moves the weights far away
   while leaving every prediction (and so the test accuracy) unchanged.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from weightspace.arch import build
from weightspace.checkpoint import load_model, save_checkpoint
from weightspace.cli.spec_cmd import _table
from weightspace.symmetry import apply, random_perms, spec
from weightspace.zoo import load_dataset

OUT = Path("demo_out")


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_mlp(ref: str, data, epochs: int = 30, seed: int = 0):
    torch.manual_seed(seed)
    model = build(ref)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data["train"]
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    torch.set_num_threads(2)
    print("== 1. permutation symmetry, discovered with torch.fx and verified ==\n")
    for ref, shape in [("resnet20?width=4", None),
                       ("timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2", None)]:
        t = time.perf_counter()
        s = spec(ref, shape)
        print(_table(s, time.perf_counter() - t), "\n")

    print("== 2. a trained MLP on digits: checkpoint, rebuild, permute ==\n")
    data = load_dataset("digits")
    ref = "mlp:64-128-128-10"
    t = time.perf_counter()
    model = train_mlp(ref, data)
    val_acc = accuracy(model, *data["val"])
    OUT.mkdir(exist_ok=True)
    path = OUT / "mlp_digits.safetensors"
    save_checkpoint(path, model, ref, {"dataset": "digits", "seed": 0, "val_acc": val_acc})
    print(f"trained {ref} in {time.perf_counter() - t:.1f} s; val acc {val_acc:.4f}; "
          f"saved {path}")

    rebuilt = load_model(path)  # architecture comes from the file's metadata
    x_test, y_test = data["test"]
    s = spec(str(path))
    perms = random_perms(s, seed=1)
    permuted = build(ref).eval()
    permuted.load_state_dict(apply(s, perms, rebuilt.state_dict()))
    dist = sum(float((a - b).pow(2).sum()) for a, b in
               zip(rebuilt.state_dict().values(), permuted.state_dict().values())) ** 0.5
    same = bool((rebuilt(x_test).argmax(1) == permuted(x_test).argmax(1)).all())
    print(f"rebuilt from metadata: test acc {accuracy(rebuilt, x_test, y_test):.4f}")
    print(f"randomly permuted:     test acc {accuracy(permuted, x_test, y_test):.4f}  "
          f"(L2 distance to original {dist:.2f}, identical predictions: {same})")
    (OUT / "mlp_spec.json").write_text(s.to_json())
    print(f"spec written to {OUT / 'mlp_spec.json'} (groups: "
          f"{', '.join(f'{g.name}[{g.size}]' for g in s.groups)})")


if __name__ == "__main__":
    main()
