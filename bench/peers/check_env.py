"""Check the bench environment ``.venv-peers`` (``make bench-peers`` runs it after installing).

Exits non-zero, naming what is wrong, unless: torch is the project's pin (one torch: nothing pulled
another), ``from semilearn import get_algorithm`` works, and USB builds ``fixmatch`` and ``pseudolabel``
with our network (:class:`bench.peers.usb_run.USBNet`) and trains one step of each on a few random
images. ``pip check`` is run and printed; its one expected complaint (torchaudio's own torch pin, see
docs/bench-peers.md) is reported, not fatal: semilearn imports torchaudio only for audio datasets.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

TORCH_PIN = "2.14.1"


def _one_step(algorithm: str, tmp: str) -> float:
    import numpy as np
    import torch
    from semilearn import get_algorithm, get_data_loader
    from semilearn.datasets.cv_datasets.datasetbase import BasicDataset

    from bench.peers import usb_run

    protocol = {"steps": 1, "model": {"name": "resnet8"}, "num_classes": 10, "sizes": {"labeled": 20},
                "batch_size": 4, "uratio": 2, "usb_lr": 0.03, "usb_weight_decay": 5e-4, "image_size": 28}
    args = usb_run.usb_args(protocol, algorithm, 0, tmp)
    weak, strong, _ = usb_run.transforms_for(28, args.crop_ratio, [0.5], [0.5], 1)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), rng.integers(0, 10, 20)
    alg = get_algorithm(args, usb_run.net_builder(protocol["model"], 1), tb_log=None, logger=None)
    usb_run.make_cpu(alg, torch.device("cpu"))
    lb = BasicDataset(algorithm, x, y, 10, weak, False, None)
    ulb = BasicDataset(algorithm, x, None, 10, weak, True, strong)
    alg.loader_dict = {"train_lb": get_data_loader(args, lb, 4, num_iters=1, num_epochs=1, num_workers=0),
                       "train_ulb": get_data_loader(args, ulb, 8, num_iters=1, num_epochs=1, num_workers=0),
                       "eval": get_data_loader(args, lb, 8, data_sampler=None, num_workers=0, drop_last=False)}
    alg.train()
    return float(alg.log_dict["train/total_loss"])


def main() -> int:
    import torch

    print(f"torch {torch.__version__}")
    if not torch.__version__.startswith(TORCH_PIN):
        print(f"error: torch {torch.__version__} in the bench environment, expected the project's {TORCH_PIN}")
        return 1
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    print(f"pip check (exit {check.returncode}):\n{check.stdout.strip() or '(nothing)'}")
    try:
        import torchaudio

        print(f"torchaudio {torchaudio.__version__} imports")
    except Exception as exc:  # noqa: BLE001  (report whatever stops it)
        print(f"torchaudio does not import: {type(exc).__name__}: {exc}")
    from semilearn import get_algorithm  # noqa: F401  (the check itself)

    with tempfile.TemporaryDirectory() as tmp:
        for alg in ("fixmatch", "pseudolabel"):
            print(f"semilearn {alg}: one CPU step with our resnet8, total loss {_one_step(alg, tmp):.3f}")
    print("bench environment ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
