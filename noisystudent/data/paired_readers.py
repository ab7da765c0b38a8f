"""Building :class:`~.paired.PairedSource` from a paired manifest or from parallel folder trees.

Both readers share one rule for incomplete items (:func:`complete_items`): an item that lacks a modality,
or whose file of some modality cannot be read (``verify``), is left out and listed in ``skipped`` with the
reason, and one warning names the first few; with ``missing="error"`` a manifest or tree whose modalities
disagree in count is a :class:`ConfigError` on ``data.modalities`` instead. A manifest (or tree) that
lacks a declared modality entirely is always that error: nothing could pair.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import ConfigError, UserError
from .base import check_file, warn_skipped
from .folder import _require_dir, scan_images
from .manifest import parse_labels, read_table
from .paired import Modality, PairedSource

__all__ = ["read_paired", "paired_manifest", "paired_folders", "complete_items"]


def complete_items(where: str, ids: Sequence[str], paths: dict[str, list[Optional[str]]], missing: str,
                   verify: bool) -> tuple[list[int], list[tuple[str, str]]]:
    """Positions of the items present (and, with ``verify``, readable) in every modality, and
    ``(id, reason)`` for the others. ``paths[m][k]`` is None where item ``k`` lacks modality ``m``."""
    counts = {m: sum(p is not None for p in ps) for m, ps in paths.items()}
    if missing == "error" and len(set(counts.values())) > 1:
        shown = ", ".join(f"{m} {n}" for m, n in counts.items())
        raise ConfigError("data.modalities", f"{where}: the modalities disagree in count ({shown} items); "
                          "data.missing_modality: skip leaves out the incomplete items instead")
    keep, skipped = [], []
    for k, iid in enumerate(ids):
        absent = [m for m, ps in paths.items() if ps[k] is None]
        reason = f"missing modality {', '.join(absent)}" if absent else None
        if reason is None and verify:
            bad = [(m, r) for m, ps in paths.items() if (r := check_file(ps[k], iid)) is not None]
            reason = f"{bad[0][0]}: {bad[0][1]}" if bad else None
        if reason is None:
            keep.append(k)
        else:
            skipped.append((iid, reason))
    return keep, skipped


def _finish(where: str, root: str, ids: list[str], paths: dict[str, list[Optional[str]]],
            modalities: dict[str, Modality], modality: str, labels: Optional[np.ndarray], classes: Optional[list[str]],
            missing: str, verify: bool) -> PairedSource:
    keep, skipped = complete_items(where, ids, paths, missing, verify)
    if not keep:
        raise UserError(f"{where}: no item has a readable file in every modality ({', '.join(modalities)})"
                        + (f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    src = PairedSource(root, [ids[k] for k in keep], {m: [ps[k] for k in keep] for m, ps in paths.items()},
                       modalities, modality, classes=classes if labels is not None else None,
                       labels=labels[keep] if labels is not None else None)
    src.skipped = skipped
    warn_skipped(where, skipped)
    return src


def paired_manifest(path: str | os.PathLike, modalities: dict[str, Modality], modality: str, *,
                    classes: Optional[list[str]] = None, missing: str = "skip", verify: bool = True,
                    field: str = "data") -> PairedSource:
    """A manifest with ``image_id``, one column per modality and an optional ``label`` (see the module docstring).
    Relative paths resolve against the manifest's folder."""
    manifest = Path(os.path.abspath(Path(path).expanduser()))
    if not manifest.is_file():
        raise UserError(f"{field}: paired manifest not found: {manifest}")
    table = read_table(manifest)
    columns = [str(c) for c in table.columns]
    if "image_id" not in columns:
        raise UserError(f"{field}: paired manifest {manifest} has no column 'image_id' (columns: {', '.join(columns)})")
    absent = [m for m in modalities if m not in columns]
    if absent:
        raise ConfigError(f"data.modalities.{absent[0]}", f"paired manifest {manifest} has no column {absent[0]!r} "
                          f"(columns: {', '.join(columns)})")
    ids = [str(v).strip() for v in table["image_id"].tolist()]
    if len(set(ids)) != len(ids) or any(not i for i in ids):
        raise UserError(f"{field}: paired manifest {manifest}: column 'image_id' must hold unique non-empty ids")
    base = manifest.parent
    paths: dict[str, list[Optional[str]]] = {}
    for m in modalities:
        paths[m] = []
        for v in table[m].tolist():
            v = v.strip().replace("\\", "/") if isinstance(v, str) else ""
            paths[m].append(str(p if (p := Path(v)).is_absolute() else base / PurePosixPath(v)) if v else None)
    labels = None
    if "label" in columns:
        labels, classes, _ = parse_labels(manifest, table["label"], classes)
    return _finish(str(manifest), str(base), ids, paths, modalities, modality, labels, classes, missing, verify)


def _tree(folder: Path) -> dict[str, str]:
    """``{relative path without extension: file}`` of every image below ``folder``."""
    out = {}
    for f in scan_images(folder):
        out[f.relative_to(folder).with_suffix("").as_posix()] = str(f)
    return out


def paired_folders(root: str | os.PathLike, modalities: dict[str, Modality], modality: str, *, labeled: bool,
                   classes: Optional[list[str]] = None, missing: str = "skip", verify: bool = True,
                   field: str = "data") -> PairedSource:
    """Parallel trees ``root/<modality>/...``; ``labeled``: each an ImageFolder tree (``<class>/<file>``)."""
    base = _require_dir(root, f"{field} paired")
    trees = {}
    for m in modalities:
        sub = base / m
        if not sub.is_dir():
            raise ConfigError(f"data.modalities.{m}", f"paired folder {base} has no sub-folder {m!r} for it")
        trees[m] = _tree(sub)
    ids = sorted(set().union(*[set(t) for t in trees.values()]))
    paths = {m: [t.get(i) for i in ids] for m, t in trees.items()}
    labels = None
    if labeled:
        names = sorted({i.split("/", 1)[0] for i in ids if "/" in i})
        if not names:
            raise UserError(f"{field}: paired folder {base} has no class folders; expected {base}/<modality>/<class>/<file>")
        classes = list(classes) if classes is not None else names
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise UserError(f"{field}: class {unknown[0]!r} in {base} is not a training class")
        index = {n: k for k, n in enumerate(classes)}
        labels = np.asarray([index.get(i.split("/", 1)[0], -1) for i in ids], dtype=np.int64)
        loose = [k for k, lab in enumerate(labels) if lab < 0 or "/" not in ids[k]]
        if loose:
            raise UserError(f"{field}: {ids[loose[0]]!r} in {base} is not inside a class folder")
    return _finish(str(base), str(base), ids, paths, modalities, modality, labels, classes, missing, verify)


def read_paired(location: str, modalities: dict[str, Modality], modality: str, *, labeled: bool,
                classes: Optional[list[str]] = None, missing: str = "skip", verify: bool = True,
                field: str = "data") -> PairedSource:
    """A paired manifest (a .csv/.parquet file) or parallel folder trees (a folder) at ``location``."""
    if Path(location).expanduser().is_dir():
        return paired_folders(location, modalities, modality, labeled=labeled, classes=classes, missing=missing,
                              verify=verify, field=field)
    src = paired_manifest(location, modalities, modality, classes=classes, missing=missing, verify=verify, field=field)
    if labeled and src.labels is None:
        raise UserError(f"{field}: paired manifest {location} has no column 'label'")
    return src



def modalities_of(cfg) -> dict[str, Modality]:
    """The decoding side (:class:`Modality`) of ``data.modalities``."""
    return {name: Modality(m.kind, m.channels) for name, m in cfg.modalities.items()}


def paired_sources(cfg) -> tuple[PairedSource, Optional[Any], Optional[PairedSource], Optional[PairedSource]]:
    """``(labeled, unlabeled, test, val)`` of a ``data.kind: paired`` section, each read in the first declared
    modality (consumers take :meth:`PairedSource.view` of the one their model reads); the unlabeled items a
    :class:`~.paired_stream.PairedStreamSource` with ``data.unlabeled_format: manifest_shards``. Labels of the
    unlabeled items, when the manifest has them, become hidden labels (pseudo-label quality only)."""
    mods, first, missing = modalities_of(cfg), next(iter(cfg.modalities)), cfg.missing_modality
    labeled = read_paired(cfg.labeled, mods, first, labeled=True, missing=missing, field="data.labeled")
    classes = list(labeled.classes)
    unlabeled = None
    if cfg.unlabeled and cfg.unlabeled_format == "manifest_shards":  # streamed, never listed on the driver
        from .paired_stream import PairedStreamSource

        unlabeled = PairedStreamSource(cfg.unlabeled, mods, first, id_column=cfg.unlabeled_id_column)
    elif cfg.unlabeled:
        unlabeled = read_paired(cfg.unlabeled, mods, first, labeled=False, classes=classes, missing=missing,
                                verify=False, field="data.unlabeled")
        if unlabeled.labels is not None:
            unlabeled.hidden_labels, unlabeled.labels, unlabeled.classes = unlabeled.labels, None, None
    test = read_paired(cfg.test, mods, first, labeled=True, classes=classes, missing=missing, field="data.test")
    val = read_paired(cfg.val, mods, first, labeled=True, classes=classes, missing=missing,
                      field="data.val") if cfg.val else None
    return labeled, unlabeled, test, val
