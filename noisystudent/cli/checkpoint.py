"""Using a checkpoint: ``evaluate`` on labeled data (a data spec, :mod:`noisystudent.data.spec`) and
``predict`` on image files and folders (the pseudo-label schema's top-k rows, :mod:`pseudo_labels.schema`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .common import quiet_option, user_errors


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True,
              help="Labeled data: an ImageFolder tree, a CSV/Parquet manifest, or 'fashion-mnist[:SPLIT][:ROOT]' with "
                   "SPLIT test (default; 10,000 images) or train (all 60,000, the images a run trained on included).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the metrics JSON here.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@quiet_option
@user_errors
def evaluate(checkpoint, data, output, batch_size, quiet):
    """Accuracy, per-class accuracy and confusion matrix of CHECKPOINT on labeled data."""
    from .. import evaluate as _evaluate
    from ..checkpoint import load_checkpoint
    from ..data import remap_to_classes
    from ..data.spec import open_data_spec, parse_data_spec
    from ..io import write_json
    from ..transforms import create_transform

    spec_of_data = parse_data_spec(data, "--data")  # a bad split is refused before the checkpoint is read
    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.spec
    source = open_data_spec(spec_of_data, spec.in_chans, labeled=True)
    remap_to_classes(source, list(spec.classes), "--data")
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    m = _evaluate.evaluate(ckpt.build_model(), source, tf, batch_size=batch_size, classes=spec.classes, progress=not quiet)
    click.echo(f"top-1 {m['top1']:.4f} on {m['n']} images ({m['skipped']} skipped)")
    for name, acc in m["per_class_accuracy"].items():
        click.echo(f"  {name:<24} {'-' if acc is None else f'{acc:.4f}'}")
    if output:
        write_json(output, m)


def _images(item: str, in_chans: int):
    """``(folder, source)`` of one ``predict`` argument: a folder's images, or one image file of its folder."""
    from ..data.folder import UnlabeledFolderSource

    p = Path(item)
    if not p.exists():
        raise UserError(f"image path not found: {p}")
    folder = p.parent if p.is_file() else p
    src = UnlabeledFolderSource(folder, in_chans)
    if p.is_file():
        ids = [i for i in range(len(src)) if src.image_id(i) == p.name]
        if not ids:
            raise UserError(f"not an image file: {p}")
        src = src.subset(ids)
    return folder, src


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Predictions Parquet file.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--topk", type=click.IntRange(1), default=5, show_default=True)
@quiet_option
@user_errors
def predict(checkpoint, images, output, batch_size, topk, quiet):
    """Predict classes of IMAGES (files or folders) with CHECKPOINT into a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pseudo_labels.schema import probs_to_table

    from ..checkpoint import load_checkpoint
    from ..evaluate import predict_probs
    from ..io import atomic_path
    from ..transforms import create_transform

    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.spec
    tf = create_transform(spec.image_size, spec.in_chans, spec.mean, spec.std, None)
    model = ckpt.build_model()
    tables, rejected = [], 0
    for item in images:
        folder, src = _images(item, spec.in_chans)
        idx, probs = predict_probs(model, src, tf, batch_size=batch_size, progress=not quiet)
        rejected += len(src) - len(idx)
        # the schema's rows: top-k highest first, ties to the lower class index, topk_classes[0] == label
        t = probs_to_table([str(folder / src.image_id(int(i))) for i in idx], probs.reshape(len(idx), spec.num_classes),
                           topk, teacher_id="")
        tables.append(t)
    rows = pa.concat_tables(tables)
    names = pa.array([spec.classes[c] for c in rows["label"].to_pylist()], pa.string())
    out = pa.table({"path": rows["image_id"], "label": rows["label"], "class_name": names,
                    "confidence": rows["confidence"], "topk_classes": rows["topk_classes"], "topk_probs": rows["topk_probs"]})
    with atomic_path(output) as tmp:
        pq.write_table(out, tmp)
    click.echo(f"{len(out)} predictions ({rejected} unreadable images skipped) -> {output}")


COMMANDS = (evaluate, predict)
