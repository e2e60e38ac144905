"""APPLE vs retraining on a SAM ViT-B, where the frozen image encoder dominates the compute.

`applefair bench` times tiny models; this script times the case APPLE is meant for: a large
encoder (SAM ViT-B, 89M parameters in its image encoder) and a small decoder, where the latent
cache removes the encoder from every epoch while retraining must run and backpropagate through it.
A reduced input size (128 px, 8x8 tokens) keeps it to minutes on a CPU; the ratio only grows
in APPLE's favour at SAM's native 1024 px, where the encoder's share is larger still.

    python bench/scale_sam_cost.py --out bench/results/scale_sam_cost.json
    python bench/scale_sam_cost.py --device cuda --img-size 1024 --batch-size 2 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from applefair.engine.device import resolve_device  # noqa: E402
from applefair.engine.io import write_json  # noqa: E402
from applefair.workflows.bench.config import BenchConfig  # noqa: E402
from applefair.workflows.bench.measure import machine  # noqa: E402
from applefair.workflows.bench.workloads import mitigation_cost  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale_sam_cost.json"))
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--n", type=int, default=60, help="images in the data set (60%% train)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["resampling"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    cfg = BenchConfig(n=args.n, size=64, epochs=args.epochs, batch_size=args.batch_size, methods=tuple(args.methods),
                      device=str(resolve_device(args.device)))
    with tempfile.TemporaryDirectory() as work:
        out = mitigation_cost(cfg, Path(work), "sam", args={"variant": "vit_b", "img_size": args.img_size})
    result = {"machine": machine(), "args": vars(args) | {"out": str(args.out)}, "sam_vit_b": out}
    write_json(args.out, result)
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
