"""Batched SAM mask decoding vs segment_anything's one-image-per-call decoder, timed A/B.

`SamSegmentor.forward` decodes a whole batch in one call; `SamSegmentor._forward_loop` (the
reference) calls segment_anything's `MaskDecoder` once per image. Both give the same logits. This
script times them interleaved (A B B A ...: the order alternates, so a drift in machine load hits
both alike), with a fixed number of torch threads, and reports per case the median wall time of
each and the speed-up (median loop / median batched) with a bootstrap 95% interval over repeats.

A third variant, `loop_single`, calls the batched decoder once per image: the batched decoder also
skips what the segmentor never returns (the IoU head and three multimask outputs), and
loop / loop_single is that share of the speed-up, loop_single / batched the share of batching.

Cases, all with box prompts: `forward` is the whole model (image encoder + decoder) in inference;
`decode` is the decoder alone on a fixed image embedding (what changed); `decode_train` is the
decoder forward and backward to the embedding, what APPLE runs per step with its latent cache.

    python bench/scale_sam_batched.py --threads 1 --out bench/results/scale_sam_batched.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from applefair.engine.io import write_json  # noqa: E402
from applefair.models import create_segmentor  # noqa: E402
from applefair.models.sam import decode_batched, decode_loop  # noqa: E402
from applefair.workflows.bench.measure import machine  # noqa: E402

# (label, variant, img_size, batch, {case: repeats})
CONFIGS = {
    "tiny": ("tiny", 64, 8, {"forward": 40, "decode": 40, "decode_train": 40}),
    "vit_b_256": ("vit_b", 256, 8, {"forward": 8, "decode": 20, "decode_train": 20}),
    "vit_b_1024": ("vit_b", 1024, 8, {"decode": 8, "decode_train": 8}),
}


def decode_loop_single(decoder, emb, pe, sparse, dense) -> torch.Tensor:
    """The batched decoder called once per image (single-mask output only, no batching)."""
    return torch.cat([decode_batched(decoder, emb[i:i + 1], pe, sparse[i:i + 1] if len(sparse) > 1 else sparse,
                                     dense[i:i + 1] if len(dense) > 1 else dense) for i in range(len(emb))])


DECODERS = {"loop": decode_loop, "loop_single": decode_loop_single, "batched": decode_batched}


def _workloads(net, batch: int, case: str) -> dict:
    """{variant: callable running `case` once}, all on the same inputs."""
    s = net.img_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, s, s, generator=g)
    boxes = torch.tensor([[s * 0.2, s * 0.3, s * 0.7, s * 0.8]]).repeat(batch, 1)
    if case == "forward":
        def run(decode):
            with torch.no_grad():
                net._run(x, boxes, None, None, decode)
        return {k: (lambda d=d: run(d)) for k, d in DECODERS.items()}
    enc = net.sam.prompt_encoder
    grid = enc.image_embedding_size
    emb = torch.randn(batch, enc.embed_dim, *grid, generator=g)
    with torch.no_grad():
        sparse, dense = net._embed_prompts({"boxes": boxes}, batch, s, s, x.device)
        pe = enc.get_dense_pe()
    dec = net.sam.mask_decoder

    def run_decode(decode):
        if case == "decode":
            with torch.no_grad():
                decode(dec, emb, pe, sparse, dense)
            return
        e = emb.clone().requires_grad_(True)
        (decode(dec, e, pe, sparse, dense) ** 2).mean().backward()
    return {k: (lambda d=d: run_decode(d)) for k, d in DECODERS.items()}


def interleaved_times(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of `repeats` interleaved runs of each callable; the order rotates and reverses
    from one repeat to the next, so no variant always runs first or after the same one."""
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in (order if (r // len(names)) % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def ratio(slow: list[float], fast: list[float], n_boot: int = 5000, seed: int = 0) -> dict:
    """median(slow) / median(fast) and a percentile bootstrap 95% interval, resampling repeats as
    pairs (the runs of one repeat saw the same machine load)."""
    a, b = np.asarray(slow), np.asarray(fast)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boot = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"ratio": float(np.median(a) / np.median(b)), "ci95": [float(lo), float(hi)]}


def summarise(times: dict[str, list[float]]) -> dict:
    """Medians, the speed-up loop/batched and its two shares, and the raw times."""
    return {"repeats": len(times["batched"]),
            "median_s": {k: float(np.median(v)) for k, v in times.items()},
            "speedup": ratio(times["loop"], times["batched"]),
            "share_single_mask": ratio(times["loop"], times["loop_single"]),
            "share_batching": ratio(times["loop_single"], times["batched"]),
            "times_s": {k: [round(t, 6) for t in v] for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for every case")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--cases", nargs="+", default=["forward", "decode", "decode_train"],
                    choices=["forward", "decode", "decode_train"])
    ap.add_argument("--repeat-scale", type=float, default=1.0, help="multiply every repeat count")
    ap.add_argument("--out", type=Path, default=Path("bench/results/scale_sam_batched.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "threads": torch.get_num_threads(), "args": vars(args) | {"out": str(args.out)},
              "cases": {}}
    for label in args.configs:
        variant, size, batch, cases = CONFIGS[label]
        torch.manual_seed(0)
        net, _ = create_segmentor("sam", variant=variant, img_size=size)
        net.eval()
        for case, repeats in cases.items():
            if case not in args.cases:
                continue
            t0 = time.time()
            stats = summarise(interleaved_times(_workloads(net, batch, case),
                                                max(2, round(repeats * args.repeat_scale))))
            key = f"{label}/{case}"
            result["cases"][key] = {"variant": variant, "img_size": size, "batch": batch, "case": case, **stats,
                                    "load_average_after": machine()["load_average"]}
            med, sp = stats["median_s"], stats["speedup"]
            print(f"{key:22s} ms: loop {med['loop'] * 1e3:8.1f} single {med['loop_single'] * 1e3:8.1f} batched "
                  f"{med['batched'] * 1e3:8.1f}  speed-up {sp['ratio']:.2f}x [{sp['ci95'][0]:.2f}, {sp['ci95'][1]:.2f}]"
                  f" (batching {stats['share_batching']['ratio']:.2f}x)  {time.time() - t0:.0f} s", flush=True)
        del net
    result["machine_after"] = machine()
    write_json(args.out, result)
    print(json.dumps({k: v["speedup"] for k, v in result["cases"].items()}))


if __name__ == "__main__":
    main()
