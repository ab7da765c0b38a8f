"""Hidden labels: the true classes of images a run treats as unlabeled (Fashion-MNIST's unlabeled split,
a manifest's label column), kept apart from training. Only figures of pseudo-label quality read them.

The one place that reads them in a run's class order: a source may name its classes in another order
(a manifest's own classes), so its hidden class ``c`` is mapped to the run's index by name, ``-1`` for
a class the run does not have or an unknown label. The labeling workers map shard by shard with
:func:`class_map` (O(classes) shipped to them); the driver looks ids up with :func:`true_labels`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np


def has_hidden_labels(source: Any) -> bool:
    """Whether ``source`` carries hidden labels (a streaming source never does)."""
    return source is not None and getattr(source, "hidden_labels", None) is not None


def class_map(source: Any, class_names: Sequence[str]) -> Optional[np.ndarray]:
    """``map[c]``: the index in ``class_names`` of the source's hidden class ``c`` (-1 unknown), with one
    more entry (-1) for an unknown hidden label; None when the source has no hidden labels."""
    if not has_hidden_labels(source):
        return None
    src_classes = getattr(source, "classes", None)
    if src_classes is None or list(src_classes) == list(class_names):
        return np.asarray(list(range(len(class_names))) + [-1], dtype=np.int64)
    index = {name: k for k, name in enumerate(class_names)}
    return np.asarray([index.get(name, -1) for name in src_classes] + [-1], dtype=np.int64)


def remap(hidden: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Hidden labels (source class indices, -1 unknown) through a :func:`class_map`."""
    hidden = np.asarray(hidden, dtype=np.int64)
    return mapping[np.where(hidden < 0, len(mapping) - 1, hidden)]


def true_labels(source: Any, image_ids: Sequence[str], class_names: Sequence[str]) -> Optional[np.ndarray]:
    """The hidden labels of ``image_ids`` as indices into ``class_names`` (-1 unknown or not in the source);
    None when the source has no hidden labels."""
    mapping = class_map(source, class_names)
    if mapping is None:
        return None
    pos = source.positions(image_ids)
    out = np.full(len(pos), -1, dtype=np.int64)
    out[pos >= 0] = remap(np.asarray(source.hidden_labels)[pos[pos >= 0]], mapping)
    return out
