"""Inference overhead of APPLE's perturber on one model of the zoo, at its full size.

`applefair bench --quick` uses a tiny SAM; this times the default SAM-like model (ViT-B) at a
CPU-friendly input size (256 px; SAM's native 1024 px makes the encoder's share, and so the
ratio, only more favourable).

    python bench/scale_inference.py --model sam --arg variant=vit_b --arg img_size=256 --size 256 \
        --out bench/results/scale_inference_sam_vit_b.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import yaml  # noqa: E402

from applefair.engine.io import write_json  # noqa: E402
from applefair.workflows.bench.measure import machine  # noqa: E402
from applefair.workflows.bench.workloads import inference_overhead  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sam")
    ap.add_argument("--arg", action="append", default=[], help="KEY=VALUE model argument (YAML value)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale_inference.json"))
    args = ap.parse_args()
    model_args = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.arg)}
    out = inference_overhead(args.model, args.size, args.repeats, **model_args)
    write_json(args.out, {"machine": machine(), "command_args": vars(args) | {"out": str(args.out)}, **out})
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
