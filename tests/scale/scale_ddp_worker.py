"""Worker for the distributed tests: trains a tiny model, rank 0 saves the weights.

Run as `python tests/scale/scale_ddp_worker.py MODES OUT_DIR [MANIFEST]` (one process) or under
`torchrun --nproc_per_node 2` (two); rank 0 writes OUT_DIR/<mode>.safetensors and the test
compares them with a one-process run. MODES (comma-separated): toy (a small BatchNorm CNN
trained with the distributed helpers), erm (the ERM trainer), apple (the APPLE trainer).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from applefair import distributed  # noqa: E402
from applefair.io import save_tensors  # noqa: E402


class _Toy(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 1, 16, 16, generator=g)
        self.y = (self.x.mean((1, 2, 3), keepdim=True) > 0).float().expand(-1, 1, 16, 16).clone()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "mask": self.y[i], "group": i % 2, "index": i}


def toy() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
    model = distributed.wrap(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = distributed.make_loader(_Toy(), batch_size=8, shuffle=True, seed=1)
    for _ in range(3):
        for batch in loader:
            loss = nn.functional.binary_cross_entropy_with_logits(model(batch["image"]), batch["mask"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.state_dict()


def _data(manifest: str):
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest

    frame = read_manifest(manifest)
    groups = GroupSpec("sex").fit(frame)
    return SegmentationDataset(frame, groups, "train"), SegmentationDataset(frame, groups, "val"), groups


def erm(manifest: str) -> dict[str, torch.Tensor]:
    from applefair.models.registry import create_segmentor
    from applefair.models.train import TrainConfig, train_segmentor

    train, val, groups = _data(manifest)
    torch.manual_seed(0)
    net, _ = create_segmentor("unet", tiny=True)
    train_segmentor(net, train, val, groups, TrainConfig(epochs=2, batch_size=8, seed=0, optimizer="sgd", lr=0.01),
                    quiet=True)  # SGD: Adam would blow rounding noise in zero-gradient biases up to 1e-3
    return {**net.state_dict(), "logits": _logits(net, val)}


def apple(manifest: str) -> dict[str, torch.Tensor]:
    from applefair.apple.trainer import AppleConfig, train_apple
    from applefair.models.registry import create_segmentor

    train, val, groups = _data(manifest)
    torch.manual_seed(0)
    net, spec = create_segmentor("unet", tiny=True)
    patched, _, _ = train_apple(net, spec.site, train, val, groups,
                                AppleConfig(epochs=2, batch_size=8, width=8, seed=0, selection="last",
                                            d_dropout=0.0),  # dropout draws per-rank random masks
                                quiet=True)
    return {**patched.perturbers.state_dict(), "logits": _logits(patched, val)}


@torch.no_grad()
def _logits(model: nn.Module, dataset) -> torch.Tensor:
    """The trained model's outputs on the validation images: what 'the same result' means."""
    from applefair.models.registry import segment

    model.eval()
    batch = {"image": torch.stack([dataset[i]["image"] for i in range(len(dataset))]),
             "mask": torch.stack([dataset[i]["mask"] for i in range(len(dataset))])}
    return segment(model, batch)


MODES = {"toy": toy, "erm": erm, "apple": apple}


def main() -> None:
    modes, out = sys.argv[1].split(","), sys.argv[2]
    if os.environ.get("SCALE_NO_SYNC_BN"):  # a control: per-rank BatchNorm statistics must break agreement
        distributed.sync_batchnorm = lambda module: module
    distributed.init()
    for mode in modes:
        state = MODES[mode](*sys.argv[3:]) if mode != "toy" else toy()
        if distributed.is_main():
            save_tensors(os.path.join(out, f"{mode}.safetensors"), state,
                         metadata={"world_size": str(distributed.world_size())})
    distributed.barrier()
    distributed.shutdown()


if __name__ == "__main__":
    main()
