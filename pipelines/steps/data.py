"""The run's data, built once per process, and the audit record of what data conditions did to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from noisystudent.data import DataBundle, create_data
from noisystudent.io import write_json

if TYPE_CHECKING:
    from pipelines.config import ExperimentConfig
    from pipelines.state import RunDir

_DATA_CACHE: dict[str, DataBundle] = {}


def load_data(cfg: "ExperimentConfig") -> DataBundle:
    """The run's data bundle, built once per process (folder scans and idx decoding are not free)."""
    import json
    from dataclasses import asdict

    key = json.dumps(asdict(cfg.data), sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = create_data(cfg.data)
    return _DATA_CACHE[key]


def record_conditions(run: "RunDir", data: DataBundle) -> None:
    """Write what ``data.label_noise`` / ``data.imbalance`` did to the run folder, for audit:
    ``data_conditions.json`` (settings, per-class counts, images flipped) and ``data_conditions.parquet``
    (one row per labeled training image kept: image_id, label_clean, label, flipped). Nothing without
    conditions."""
    if data.conditions is None:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from noisystudent.io import atomic_path

    rows = data.conditions["rows"]
    table = pa.table({"image_id": pa.array(rows["image_id"], pa.string()),
                      "label_clean": pa.array(rows["label_clean"], pa.int32()),
                      "label": pa.array(rows["label"], pa.int32()), "flipped": pa.array(rows["flipped"], pa.bool_())})
    run.root.mkdir(parents=True, exist_ok=True)
    with atomic_path(run.root / "data_conditions.parquet") as tmp:
        pq.write_table(table, tmp)
    write_json(run.root / "data_conditions.json", data.conditions["summary"])
