"""Draw docs/img/synthetic_examples.png: one sample per kind, mechanism and group.

Majority and minority columns are drawn from the same random draw, so what changes between
them is only the mechanism (the anatomy mechanism changes the shape itself). Red: mask outline.

Example: OMP_NUM_THREADS=1 python bench/data_figure.py --out docs/img/synthetic_examples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from applefair.data import vessels  # noqa: E402
from applefair.data.synthetic import BIASES, KIND_OF_BIAS, acquisitions, lesion_mask, render  # noqa: E402


def sample(kind: str, bias: str, minority: bool, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 7])
    if kind == "nodules":
        acq = acquisitions(bias)["F" if minority else "M"]
        mask = lesion_mask(rng, size, acq.lesion_scale)
        return render(rng, mask, acq), mask
    look = vessels.looks(bias)["old" if minority else "young"]
    return vessels.render_fundus(rng, size, look)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/img/synthetic_examples.png"))
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    cols = [("nodules", False, "nodules, M (majority)"), ("nodules", True, "nodules, F (minority)"),
            ("vessels", False, "vessels, age < 60 (majority)"), ("vessels", True, "vessels, age >= 60 (minority)")]
    fig, axes = plt.subplots(len(BIASES), len(cols), figsize=(2.3 * len(cols), 2.3 * len(BIASES)))
    for r, bias in enumerate(BIASES):
        for c, (kind, minority, title) in enumerate(cols):
            img, mask = sample(kind, bias, minority, args.size, args.seed)
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            edge = mask & ~ndimage.binary_erosion(mask)
            overlay = np.zeros((*mask.shape, 4))
            overlay[edge] = (1, 0, 0, 0.55)
            ax.imshow(overlay)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{bias}\n({KIND_OF_BIAS[bias]})", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
