"""Evaluation and prediction on an :class:`ImageSource` with the clean eval transform.

Unreadable images are skipped and counted (``skipped`` in the result), never fatal.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ImageSource
from .data.torch_dataset import SourceDataset, collate_skip_none


@torch.inference_mode()
def predict_probs(
    model: torch.nn.Module,
    source: ImageSource,
    transform: Callable,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    temperature: float = 1.0,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(indices, probs)``: source indices that decoded, and softmax(logits / T) for each."""
    was_training = model.training
    model.eval()
    ds = SourceDataset(source, transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_skip_none)
    all_idx, all_probs = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        if batch is None or len(batch) == 0 or batch[0] is None or len(batch[0]) == 0:
            continue
        x, _y, idx = batch
        logits = model(x.to(device)).float()
        all_probs.append(torch.softmax(logits / temperature, dim=1).cpu().numpy())
        all_idx.append(np.asarray(idx))
    model.train(was_training)
    if not all_idx:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(all_idx).astype(np.int64), np.concatenate(all_probs)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Top-1, per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    c = len(classes)
    cm = np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None) for i, name in enumerate(classes)
    }
    return {
        "top1": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "n": int(len(y_true)),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
    }


def evaluate(
    model: torch.nn.Module,
    source: ImageSource,
    transform: Callable,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    classes: Optional[list[str]] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of ``model`` on a labeled source: top-1, per-class accuracy, confusion matrix, skipped count."""
    classes = classes or source.classes
    idx, probs = predict_probs(model, source, transform, batch_size, device, progress=progress, desc="evaluate")
    labels = np.asarray(source.labels)[idx] if len(idx) else np.zeros(0, dtype=np.int64)
    preds = probs.argmax(1) if len(idx) else np.zeros(0, dtype=np.int64)
    out = classification_metrics(labels.astype(np.int64), preds.astype(np.int64), list(classes))
    out["skipped"] = int(len(source) - len(idx))
    return out
