"""A tiny run folder (data, deployed model, patch, evaluations) for the report tests, built once."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch


def _evaluate(model, dataset, groups, folder):
    from applefair.engine.io import write_csv, write_json
    from applefair.metrics.evaluate import predict_scores
    from applefair.metrics.fairness import fairness_summary

    scores = predict_scores(model, dataset, groups)
    summary = fairness_summary(scores, groups.attribute, groups.groups, bootstrap=40, seed=0)
    write_json(folder / "metrics.json", summary)
    write_csv(folder / "per_sample.csv", scores)
    return summary


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A demo-shaped run folder: a tiny untrained U-Net, a random (non-zero) patch, real metrics files."""
    from applefair.apple.patch import PatchedSegmentor, perturbers_for, save_patch
    from applefair.data.groups import GroupSpec
    from applefair.data.manifest import SegmentationDataset, read_manifest
    from applefair.data.synthetic import generate
    from applefair.engine.io import state_dict_hash, write_csv, write_json, write_yaml
    from applefair.models.registry import create_segmentor, save_model_dir

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("run") / "tiny-run"
    manifest = generate(root / "data", n=36, size=64, bias="contrast", seed=5)
    frame = read_manifest(manifest)
    with warnings.catch_warnings():  # tiny on purpose: small-group warnings are expected here
        warnings.simplefilter("ignore")
        groups = GroupSpec("sex").fit(frame)
    test = SegmentationDataset(frame, groups, "test")
    net, spec = create_segmentor("unet", tiny=True)
    net.eval()
    save_model_dir(root / "deployed", net, spec)
    hash_before = state_dict_hash(net)
    _evaluate(net, test, groups, root / "before")
    patched = PatchedSegmentor(net, perturbers_for(net, [spec.site], test[0]["image"][None]))
    with torch.no_grad():
        for p in patched.perturbers.parameters():
            p.add_(0.05 * torch.randn_like(p))
    _evaluate(patched, test, groups, root / "after")
    save_patch(root / "patch.safetensors", patched, {"model": spec.name, "groups": groups.to_dict()})
    write_yaml(root / "config.yaml", {"command": "demo", "seed": 0, "n": 36, "channels": [8, 16, 32, 64]})
    write_json(root / "leakage.json", {spec.site: {"auc_before": 0.93, "auc_after": 0.71,
                                                   "auc_before_ci": [0.85, 0.99], "auc_after_ci": [0.6, 0.8]}})
    write_json(root / "frozen_check.json", {"hash_before": hash_before, "hash_after": state_dict_hash(net),
                                            "unchanged": True, "selected_epoch": 2, "sites": [spec.site]})
    rows = [{"epoch": 0, "val_dice": 0.5, "val_es_dice": 0.4}]
    rows += [{"epoch": e, "l_seg": 1.0 / e, "l_d": 0.7 - 0.05 * e, "d_acc": 0.9 - 0.1 * e, "d_entropy": 0.3,
              "val_dice": 0.5 + 0.01 * e, "val_es_dice": 0.4 + 0.02 * e} for e in (1, 2, 3)]
    write_csv(root / "history.csv", pd.DataFrame(rows))
    patched.remove()
    return root


@pytest.fixture(scope="session")
def tiny_run_report(tiny_run):
    """The tiny run with its reports written (once)."""
    from applefair.report import write_reports

    written = write_reports(tiny_run)
    return tiny_run, written


@pytest.fixture
def hostile_run():
    """A function writing a run folder whose names are hostile strings."""
    return _hostile_run


def _hostile_run(root, attribute: str, groups: list[str]):
    """A run folder without models whose attribute and group names are hostile strings."""
    from applefair.engine.io import write_csv, write_json, write_yaml
    from applefair.metrics.fairness import fairness_summary

    rng = np.random.default_rng(0)
    ids = [f"case<{i}>" for i in range(30)]
    per_sample = pd.DataFrame({"id": ids, "group": [groups[i % len(groups)] for i in range(30)],
                               "dice": rng.uniform(0.5, 0.95, 30), "iou": rng.uniform(0.3, 0.9, 30)})
    write_json(root / "metrics.json", fairness_summary(per_sample, attribute, groups))
    write_csv(root / "per_sample.csv", per_sample)
    manifest = pd.DataFrame({"image": [f"{i}.png" for i in ids], "mask": [f"{i}_m.png" for i in ids],
                             "split": "test", attribute: per_sample["group"]})
    write_csv(root / "data" / "manifest.csv", manifest)
    write_yaml(root / "config.yaml", {"command": attribute, "note": "<b>bold</b> & 'quotes'"})
    (root / "leakage.json").write_text(json.dumps({attribute: {"auc": 0.6}}))
    return root
