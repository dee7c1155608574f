"""The main job on the bundled default (digits): what weightspace can do today.

1. discover + verify the permutation symmetry of the built-in ResNet-20 and a timm ViT;
2. train a zoo of 64 MLPs on digits, batched across seeds with torch.func (rerunning the
   demo resumes it: finished models are skipped);
3. rebuild one zoo model from its checkpoint alone and show that a random permutation from
   its spec moves the weights far away while leaving every prediction unchanged.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from weightspace.arch import build
from weightspace.cli.spec_cmd import _table
from weightspace.symmetry import apply, random_perms, spec
from weightspace.zoo import HParams, Zoo, load_dataset, train_zoo

OUT = Path("demo_out")
ARCH = "mlp:64-64-64-10"


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    torch.set_num_threads(2)
    print("== 1. permutation symmetry, discovered with torch.fx and verified ==\n")
    for ref, shape in [("resnet20?width=4", None),
                       ("timm:vit_tiny_patch16_224?img_size=32&patch_size=4&depth=2", None)]:
        t = time.perf_counter()
        s = spec(ref, shape)
        print(_table(s, time.perf_counter() - t), "\n")

    print(f"== 2. a zoo: 64 x {ARCH} on digits, 30 epochs each, batched across seeds ==\n")
    zoo_dir = OUT / "zoo"
    res = train_zoo(zoo_dir, ARCH, "digits", HParams(epochs=30, batch_size=32, lr=1e-3),
                    models=64, progress=True)
    print(f"trained {res['trained']} model(s) ({res['skipped']} already done) in "
          f"{res['seconds']:.1f} s; {res['done']} models in {zoo_dir}: mean val acc "
          f"{res['mean_val_acc']:.4f}, mean test acc {res['mean_test_acc']:.4f} "
          f"+- {res['std_test_acc']:.4f}")
    print(f"(inspect it: weightspace zoo list {zoo_dir}; weightspace zoo eval {zoo_dir})\n")

    print("== 3. one zoo model: rebuild from the file alone, permute ==\n")
    zoo = Zoo(zoo_dir)
    rebuilt = zoo.load("s0000")  # architecture comes from the file's metadata
    x_test, y_test = load_dataset("digits")["test"]
    path = zoo.model_path("s0000")
    s = spec(str(path))
    perms = random_perms(s, seed=1)
    permuted = build(ARCH).eval()
    permuted.load_state_dict(apply(s, perms, rebuilt.state_dict()))
    dist = sum(float((a - b).pow(2).sum()) for a, b in
               zip(rebuilt.state_dict().values(), permuted.state_dict().values())) ** 0.5
    same = bool((rebuilt(x_test).argmax(1) == permuted(x_test).argmax(1)).all())
    print(f"{path} rebuilt from metadata: test acc {accuracy(rebuilt, x_test, y_test):.4f}")
    print(f"randomly permuted:     test acc {accuracy(permuted, x_test, y_test):.4f}  "
          f"(L2 distance to original {dist:.2f}, identical predictions: {same})")
    (OUT / "mlp_spec.json").write_text(s.to_json())
    print(f"spec written to {OUT / 'mlp_spec.json'} (groups: "
          f"{', '.join(f'{g.name}[{g.size}]' for g in s.groups)})")


if __name__ == "__main__":
    main()
