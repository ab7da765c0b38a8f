"""One USB (``semilearn`` 0.3.2) run on our protocol, in the bench environment ``.venv-peers``.

``python -m bench.peers.usb_run --split S.npz --protocol P.json --algorithm fixmatch --seed 0 --out R.json``

Run by :mod:`bench.peers` with ``.venv-peers/bin/python`` and this worktree on ``PYTHONPATH``; it
imports from the project only ``noisystudent.models`` (torch and torchvision alone), so the bench
environment needs none of the package's runtime dependencies (Ray, albumentations, pyarrow).

What is USB's and what is ours:

- USB's: the algorithm classes from ``semilearn.get_algorithm`` (``fixmatch``, ``pseudolabel``) with
  their own ``train_step``, hooks (pseudo-labeling, fixed thresholding, EMA of the weights, parameter
  update), optimizer (``get_optimizer``: SGD with Nesterov, no weight decay on BN and bias) and cosine
  schedule, their default hyper-parameters (``p_cutoff`` 0.95, ``T`` 0.5, ``ema_m`` 0.999,
  ``unsup_warm_up`` 0.4), their ``BasicDataset`` and their CIFAR transforms (weak: flip + reflect-padded
  crop, ``crop_ratio`` 0.875; strong: the same plus USB's ``RandAugment(3, 5)`` with Cutout) and their
  ``get_data_loader`` (random sampling with replacement, ``num_train_iter x batch`` images).
- Ours: the images and their split (``--split``, written by :mod:`bench.peers.protocol` from our data
  code), the network (our ``create_model`` wrapped in :class:`USBNet`), the optimizer steps, the labeled
  batch size and the unlabeled ratio, and the test set.

Three things USB cannot do on a machine without CUDA, changed here and nowhere else (all in
:func:`make_cpu`): ``process_batch`` and ``evaluate`` call ``.cuda()`` on every batch, and ``TimerHook``
records ``torch.cuda.Event`` s; the first two move to ``--device`` instead, the timer hook is dropped (it
only logs). The model is moved to the device, as USB's ``train.py`` does before training.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ALGORITHMS = ("fixmatch", "pseudolabel")


class USBNet(nn.Module):
    """Our model with USB's network face: ``forward(x)`` returns ``{'logits', 'feat'}``; ``only_feat``
    returns the pooled features, ``only_fc`` applies the classifier to given features (what USB's own
    ``wrn``/``resnet`` nets accept). ``feat`` is the classifier's input (after dropout), so
    ``logits == fc(feat)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, only_fc: bool = False, only_feat: bool = False, **_):
        if only_fc:
            return self.model.head.fc(x)
        feat = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        if only_feat:
            return feat
        return {"logits": self.model.head.fc(feat), "feat": feat}

    def group_matcher(self, coarse: bool = False, prefix: str = ""):
        """USB asks for it only with layer_decay != 1 (not used here)."""
        return {"stem": rf"^{prefix}model\.stem", "blocks": rf"^{prefix}model\.stages"}


def net_builder(model_cfg: dict, in_chans: int):
    """USB's ``net_builder(num_classes, pretrained, pretrained_path)`` for our model."""
    from noisystudent.models import create_model

    def build(num_classes: int, pretrained: bool = False, pretrained_path=None, **_):
        if pretrained:
            raise SystemExit("error: the bench trains from scratch (use_pretrain must stay False)")
        return USBNet(create_model(model_cfg["name"], num_classes, in_chans=in_chans,
                                   drop_rate=model_cfg.get("drop_rate"), drop_path_rate=model_cfg.get("drop_path_rate")))

    return build


def _to_rgb(img):
    return img.convert("RGB")


def _to_gray(img):
    return img.convert("L")


def transforms_for(img_size: int, crop_ratio: float, mean, std, in_chans: int):
    """USB's CIFAR weak / strong / eval transforms (``semilearn.datasets.cv_datasets.cifar``) for our images.

    USB's RandAugment paints Cutout with an RGB colour, which a one-channel PIL image refuses, so a
    grayscale image is augmented as RGB and turned back to one channel before ``ToTensor`` (the same
    pixels: PIL's L->RGB->L round trip is exact on gray values)."""
    from semilearn.datasets.augmentation import RandAugment
    from torchvision import transforms as T

    pad = int(img_size * (1 - crop_ratio))
    norm = [T.ToTensor(), T.Normalize(mean, std)]
    gray = [T.Lambda(_to_gray)] if in_chans == 1 else []
    weak = T.Compose([T.RandomCrop(img_size, padding=pad, padding_mode="reflect"), T.RandomHorizontalFlip()] + norm)
    strong = T.Compose([T.Lambda(_to_rgb), T.RandomCrop(img_size, padding=pad, padding_mode="reflect"),
                        T.RandomHorizontalFlip(), RandAugment(3, 5)] + gray + norm)
    return weak, strong, T.Compose(norm)


def usb_args(protocol: dict, algorithm: str, seed: int, save_dir: str):
    """USB's argument namespace (``semilearn.get_config``: its defaults plus the algorithm's) with our
    protocol's steps, batch, ratio and optimizer settings."""
    from semilearn import get_config

    steps = int(protocol["steps"])
    cfg = {
        "algorithm": algorithm, "net": protocol["model"]["name"], "use_pretrain": False, "dataset": "noisystudent",
        "num_classes": protocol["num_classes"], "num_labels": protocol["sizes"]["labeled"],
        "epoch": 1, "num_train_iter": steps, "num_eval_iter": steps, "num_log_iter": max(1, steps // 10),
        "num_warmup_iter": 0, "batch_size": protocol["batch_size"], "uratio": protocol["uratio"],
        "eval_batch_size": 256, "ulb_loss_ratio": 1.0, "ema_m": 0.999,
        "optim": "SGD", "lr": protocol["usb_lr"], "momentum": 0.9, "weight_decay": protocol["usb_weight_decay"],
        "layer_decay": 1.0, "img_size": protocol["image_size"], "crop_ratio": 0.875, "num_workers": 0,
        "seed": seed, "gpu": None, "distributed": False, "world_size": 1, "rank": 0,
        "multiprocessing_distributed": False, "save_dir": save_dir, "save_name": f"{algorithm}-seed{seed}",
        "use_cat": True, "amp": False, "clip_grad": 0.0, "resume": False, "overwrite": True,
        "use_wandb": False, "use_aim": False, "use_tensorboard": False,
    }
    return get_config(cfg)


def make_cpu(alg, device: torch.device) -> None:
    """Let a USB algorithm run on ``device`` without CUDA (the three changes of the module docstring)."""
    from semilearn.core.hooks import TimerHook

    def process_batch(input_args=None, **kwargs):
        from inspect import signature

        names = list(signature(alg.train_step).parameters) if input_args is None else input_args
        return {k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device))
                for k, v in kwargs.items() if k in names and v is not None}

    def evaluate(eval_dest="eval", out_key="logits", return_logits=False):
        acc = evaluate_loader(alg, alg.loader_dict[eval_dest], device, ema=True)
        return {f"{eval_dest}/top-1-acc": acc, f"{eval_dest}/loss": float("nan")}

    alg.process_batch = process_batch
    alg.evaluate = evaluate
    alg._hooks = [h for h in alg._hooks if not isinstance(h, TimerHook)]
    alg.hooks_dict = {h.name: h for h in alg._hooks}
    alg.model = alg.model.to(device)
    alg.ema_model = alg.ema_model.to(device)


@torch.no_grad()
def evaluate_loader(alg, loader, device: torch.device, ema: bool = True) -> float:
    """Top-1 accuracy of the algorithm's model (with USB's EMA weights applied, as its ``evaluate`` does)."""
    alg.model.eval()
    if ema and alg.ema is not None:
        alg.ema.apply_shadow()
    correct = total = 0
    for data in loader:
        logits = alg.model(data["x_lb"].to(device))["logits"]
        correct += int((logits.argmax(1).cpu() == data["y_lb"]).sum())
        total += len(data["y_lb"])
    if ema and alg.ema is not None:
        alg.ema.restore()
    alg.model.train()
    return correct / max(total, 1)


def _images(arr: np.ndarray, in_chans: int) -> np.ndarray:
    """(N, H, W) uint8 as USB's BasicDataset wants it: (N, H, W) for one channel, (N, H, W, 3) for three."""
    return arr if in_chans == 1 else np.repeat(arr[..., None], 3, axis=3)


def run(split_path: Path, protocol: dict, algorithm: str, seed: int, save_dir: Path, device: str = "cpu") -> dict:
    from semilearn import get_algorithm, get_data_loader
    from semilearn.datasets.cv_datasets.datasetbase import BasicDataset

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    args = usb_args(protocol, algorithm, seed, str(save_dir))
    split = np.load(split_path)
    c = protocol["in_chans"]
    weak, strong, plain = transforms_for(protocol["image_size"], args.crop_ratio, protocol["mean"], protocol["std"], c)
    lb = BasicDataset(algorithm, _images(split["x_labeled"], c), split["y_labeled"], args.num_classes, weak, False, None)
    ulb = BasicDataset(algorithm, _images(split["x_unlabeled"], c), None, args.num_classes, weak, True, strong)
    val = BasicDataset(algorithm, _images(split["x_val"], c), split["y_val"], args.num_classes, plain, False, None)
    test = BasicDataset(algorithm, _images(split["x_test"], c), split["y_test"], args.num_classes, plain, False, None)

    t0 = time.perf_counter()
    alg = get_algorithm(args, net_builder(protocol["model"], c), tb_log=None, logger=None)
    make_cpu(alg, dev)
    alg.loader_dict = {
        "train_lb": get_data_loader(args, lb, args.batch_size, data_sampler=args.train_sampler,
                                    num_iters=args.num_train_iter, num_epochs=args.epoch, num_workers=0),
        "train_ulb": get_data_loader(args, ulb, args.batch_size * args.uratio, data_sampler=args.train_sampler,
                                     num_iters=args.num_train_iter, num_epochs=args.epoch, num_workers=0),
        "eval": get_data_loader(args, val, args.eval_batch_size, data_sampler=None, num_workers=0, drop_last=False),
    }
    alg.train()
    test_loader = get_data_loader(args, test, args.eval_batch_size, data_sampler=None, num_workers=0, drop_last=False)
    return {
        "algorithm": algorithm, "seed": seed, "steps": int(alg.it), "test_acc": evaluate_loader(alg, test_loader, dev),
        "test_acc_no_ema": evaluate_loader(alg, test_loader, dev, ema=False),
        "val_acc": evaluate_loader(alg, alg.loader_dict["eval"], dev), "test_images": len(test),
        "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
        "usb_args": {k: v for k, v in sorted(vars(args).items()) if isinstance(v, (int, float, str, bool, type(None)))},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, type=Path, help="the .npz written by bench.peers.protocol")
    ap.add_argument("--protocol", required=True, type=Path, help="the protocol JSON written by bench.peers.protocol")
    ap.add_argument("--algorithm", required=True, choices=ALGORITHMS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path, help="result JSON")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    protocol = json.loads(args.protocol.read_text(encoding="utf-8"))
    result = run(args.split, protocol, args.algorithm, args.seed, args.out.parent / f"usb-{args.algorithm}-{args.seed}",
                 args.device)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    os.replace(tmp, args.out)
    print(json.dumps({k: result[k] for k in ("algorithm", "seed", "steps", "test_acc", "val_acc", "seconds")}))


if __name__ == "__main__":
    sys.exit(main())
