"""Example overlays: predictions of the deployed model before and after the patch.

The run folder stores models and data, not predictions, so the report recomputes the few
it shows: it loads ``deployed/`` (or the config's ``model``), attaches ``patch.safetensors``
(or the config's ``patch``) and reads the test split of the run's manifest. "Before" is the
same patched model with its perturbers switched off, so both come from one forward path. A 3-D case
is shown as the slice through the middle of its lesion (`mid_slice`); its Dice is the whole volume's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import default_collate

from applefair.engine import runfolder as rf
from applefair.errors import InputError
from applefair.report.rundata import RunData, config_path


def _path(run: RunData, local: str, key: str, marker: str = "") -> Path | None:
    """`local` inside the run folder, else the config's `key`; `marker` must exist inside it (model folders)."""
    cands = [run.root / local]
    value = config_path(run.config, key)
    if value:
        cands += [Path(value), run.root / value]
    for cand in cands:
        if cand.exists() and (not marker or (cand / marker).is_file()):
            return cand
    return None


def pick_cases(per_sample, per_group: int = 1) -> list[tuple[str, str, str]]:
    """(group, 'best'|'worst', id) for each known group, by Dice."""
    out = []
    frame = per_sample[per_sample["group"].astype(str) != "unknown"].dropna(subset=["dice"])
    for group, sub in frame.groupby("group", sort=True):
        ranked = sub.sort_values("dice", kind="stable")
        best = ranked.iloc[::-1].head(per_group)["id"].astype(str).tolist()
        worst = [i for i in ranked.head(per_group)["id"].astype(str).tolist() if i not in best]
        out += [(str(group), "best", i) for i in best] + [(str(group), "worst", i) for i in worst]
    return out


@torch.no_grad()
def compute_overlays(run: RunData, per_group: int = 1) -> tuple[list[dict] | None, str]:
    """The chosen cases with image, truth, before and after masks, or (None, why not)."""
    from applefair.apple.patch import attach
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.metrics.segmentation import per_sample_metrics
    from applefair.models.forward import segment
    from applefair.models.registry import load_model_dir

    model_dir = _path(run, rf.DEPLOYED, "model", marker=rf.MODEL_CONFIG)
    patch = _path(run, rf.PATCH, "patch")
    scored = next((e for e in reversed(run.evaluations) if e.per_sample is not None), None)
    missing = [what for what, ok in ((f"a {rf.DEPLOYED}/ model folder", model_dir), (rf.PATCH, patch),
                                     ("the data manifest", run.manifest_path), (rf.PER_SAMPLE, scored))
               if ok is None]
    if missing:
        return None, "Example overlays skipped: missing " + ", ".join(missing) + "."
    try:
        net, _spec = load_model_dir(model_dir)
        patched = attach(net, patch)
        frame = read_manifest(run.manifest_path)
    except InputError as exc:
        return None, f"Example overlays skipped: {exc}"
    meta_groups = getattr(patched, "groups", None) or getattr(patched, "meta", {}).get("groups")
    groups = GroupSpec.from_dict(meta_groups) if meta_groups else \
        GroupSpec(run.attribute or "", list(scored.metrics["groups"]))
    if groups.attribute not in frame.columns:
        return None, f"Example overlays skipped: attribute column '{groups.attribute}' is not in the manifest."
    test = SegmentationDataset(frame, groups, "test")
    index = {i: k for k, i in enumerate(test.ids)}
    cases = [(g, w, i) for g, w, i in pick_cases(scored.per_sample, per_group) if i in index]
    if not cases:
        return None, "Example overlays skipped: none of the scored ids is in the manifest's test split."
    batch = default_collate([test[index[i]] for _, _, i in cases])
    patched.eval()
    with patched.disabled():
        before = torch.sigmoid(segment(patched, batch))
    after = torch.sigmoid(segment(patched, batch))
    d_before = per_sample_metrics(before, batch["mask"])["dice"]
    d_after = per_sample_metrics(after, batch["mask"])["dice"]
    out = []
    for k, (g, which, i) in enumerate(cases):
        arrays = {"image": batch["image"][k, 0], "mask": batch["mask"][k, 0], "before": (before[k, 0] > 0.5).float(),
                  "after": (after[k, 0] > 0.5).float()}
        where = {}
        if arrays["image"].ndim == 3:  # a volume: show the slice through the middle of its lesion
            z = mid_slice(arrays["mask"])
            arrays = {key: a[z] for key, a in arrays.items()}
            where = {"slice": z, "depth": int(batch["image"].shape[2])}
        out.append({"group": g, "which": which, "id": i, **{key: a.numpy() for key, a in arrays.items()},
                    "dice_before": float(d_before[k]), "dice_after": float(d_after[k]), **where})
    return out, ""


def mid_slice(truth: torch.Tensor) -> int:
    """The slice (along the first axis of a (D, H, W) mask) through the truth's centre of mass, rounded; the
    middle slice when the truth is empty. Dice in the overlays stays the whole volume's."""
    depth = truth.shape[0]
    per_slice = truth.reshape(depth, -1).float().sum(1)
    if float(per_slice.sum()) == 0:
        return depth // 2
    centre = float((per_slice * torch.arange(depth, dtype=per_slice.dtype)).sum() / per_slice.sum())
    return min(depth - 1, max(0, int(round(centre))))
