"""The pseudo-label store: Parquet schema, the Ray Data labeling job, shard I/O and selection.

Importing this package does not import torch or Ray; :func:`label_images` imports them when called.
"""

from __future__ import annotations

from typing import Any

from .schema import COLUMNS, SCHEMA, SCHEMA_VERSION, LabelMetadata, probs_to_table
from .select import select_pseudo_labels
from .selection_io import read_selection, read_selection_summary, write_selection
from .streamed_select import select_folder
from .store import (
    SUCCESS,
    is_complete,
    list_shards,
    read_labels,
    read_metadata,
    read_rejected,
    soft_targets,
    write_shard,
)

__all__ = [
    "COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SUCCESS",
    "LabelMetadata",
    "inspect_labels",
    "is_complete",
    "label_images",
    "list_shards",
    "probs_to_table",
    "read_labels",
    "read_metadata",
    "read_rejected",
    "read_selection",
    "read_selection_summary",
    "select_folder",
    "select_pseudo_labels",
    "soft_targets",
    "true_labels",
    "write_selection",
    "write_shard",
]


def __getattr__(name: str) -> Any:
    # Lazy: the labeling job needs torch (and Ray when run); readers and selection do not.
    if name in ("label_images", "true_labels", "Labeler", "load_teachers"):
        from . import labeling

        return getattr(labeling, name)
    if name == "inspect_labels":
        from .inspect import inspect_labels

        return inspect_labels
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
