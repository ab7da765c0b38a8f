"""``noisystudent anomaly``: STPM anomaly detection (train a detector, score images, report)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import address_option, experiment_options, quiet_option, user_errors
from .experiment import load_anomaly_experiment


@click.group()
def anomaly() -> None:
    """STPM anomaly detection: train a detector on normal images, score new images, report."""


@anomaly.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="The detector's run folder (resumable).")
@click.option("--force", is_flag=True, help="Start the run folder over.")
@experiment_options
@user_errors
def anomaly_train(config, run_dir, force, sets, ray_address, workers, gpus_per_worker, quiet):
    """Train an STPM detector from CONFIG (an anomaly config file) into RUN_DIR; run again to resume."""
    from pipelines.anomaly.train import train_detector

    cfg = load_anomaly_experiment(config, sets, ray_address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker)
    rec = train_detector(cfg, run_dir, force=force, progress=not quiet)
    click.echo(f"detector {rec['detector_id']}: threshold {rec['threshold']:.4g} at FPR target "
               f"{rec['threshold_fpr_target']:g} on {rec['val_images']} validation normals -> {Path(run_dir) / 'detector.json'}")


@anomaly.command("score")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder of score shards.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Images per inference batch (default: the run's score.batch_size).")
@click.option("--num-actors", type=click.IntRange(1), default=None, help="Ray Data actors (default: score.num_actors).")
@click.option("--gpus-per-actor", type=click.FloatRange(0), default=None, help="GPUs per actor (default: score.num_gpus_per_actor).")
@click.option("--cpus-per-actor", type=click.FloatRange(0), default=None, help="CPUs per actor (default: score.num_cpus_per_actor).")
@click.option("--chunk-size", type=click.IntRange(1), default=None, help="Images per shard (default: score.chunk_size).")
@click.option("--maps/--no-maps", default=None, help="Store each image's anomaly map in the shards (default: score.save_maps).")
@click.option("--masks", type=click.Path(file_okay=False), default=None, help="Defect masks for the report's pixel AUROC.")
@click.option("--no-report", is_flag=True, help="Do not write OUT/report/index.html.")
@click.option("--force", is_flag=True, help="Score again even if finished.")
@address_option
@quiet_option
@user_errors
def anomaly_score(run_dir, images, out_dir, batch_size, num_actors, gpus_per_actor, cpus_per_actor, chunk_size, maps,
                  masks, no_report, force, ray_address, quiet):
    """Score IMAGES (a folder, or image files and folders) with the detector of RUN_DIR into OUT (Parquet)."""
    from pipelines.anomaly.score import images_source, score_images
    from pipelines.anomaly.train import load_detector

    record, _, _ = load_detector(run_dir)
    source = images_source(images, int(record["in_chans"]))
    s = score_images(run_dir, source, out_dir, batch_size=batch_size, num_actors=num_actors,
                     num_gpus_per_actor=gpus_per_actor, num_cpus_per_actor=cpus_per_actor, chunk_size=chunk_size,
                     save_maps=maps, force=force, progress=not quiet, inputs=[str(Path(p).resolve()) for p in images],
                     ray_address=ray_address)
    click.echo(f"scored {s['scored']} images ({s['rejected'] + s['skipped_at_scan']} unreadable, listed in "
               f"{Path(out_dir) / 'rejected.csv'}); {s['flagged']} flagged above threshold {s['threshold']:.4g} -> {out_dir}")
    if s.get("image_auroc") is not None:
        click.echo(f"image AUROC (good/ vs the other folders): {s['image_auroc']:.4f}")
    if not no_report:
        from pipelines.anomaly.report import build_anomaly_report

        click.echo(f"report: {build_anomaly_report(out_dir, masks=masks)}")


@anomaly.command("report")
@click.argument("score_dir", type=click.Path(file_okay=False))
@click.option("--masks", type=click.Path(file_okay=False), default=None, help="Defect masks for pixel AUROC and outlines.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Write the report here instead of SCORE_DIR/report.")
@user_errors
def anomaly_report(score_dir, masks, out):
    """Histograms, ROC/AUROC (with good/ and defect/ folders) and maps over images of a score folder."""
    from pipelines.anomaly.report import build_anomaly_report

    click.echo(f"report: {build_anomaly_report(score_dir, out, masks=masks)}")


COMMANDS = (anomaly,)
