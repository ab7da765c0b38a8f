"""The bench-peers table and figure: per arm, test accuracy mean ± std over seeds and CPU / wall minutes."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.harness import mean_std, pyplot, save_figure, text_table

LABELS = {"ours": "ours: Noisy Student loop (teacher + students)", "fixmatch": "USB FixMatch",
          "pseudolabel": "USB Pseudo-Label"}


def summarize(results: list[dict]) -> list[dict]:
    """One row per arm (in the order first seen), plus our teacher alone as a reference row."""
    rows = []
    arms = list(dict.fromkeys(r["arm"] for r in results))
    for arm in arms:
        rs = [r for r in results if r["arm"] == arm]
        mean, std = mean_std([r["test_acc"] for r in rs])
        row = {"arm": arm, "label": LABELS.get(arm, arm), "seeds": [r["seed"] for r in rs], "test_acc_mean": mean,
               "test_acc_std": std, "test_acc": [r["test_acc"] for r in rs],
               "cpu_min_mean": statistics.fmean(r["cpu_s"] for r in rs) / 60,
               "wall_min_mean": statistics.fmean(r["wall_s"] for r in rs) / 60,
               "steps": [r.get("student_steps", r.get("steps")) for r in rs]}
        if all("test_acc_no_ema" in r for r in rs):  # USB reports its EMA model; its last weights too
            row["test_acc_no_ema_mean"], row["test_acc_no_ema_std"] = mean_std([r["test_acc_no_ema"] for r in rs])
        if arm == "ours":
            t_mean, t_std = mean_std([r["teacher_acc"] for r in rs])
            row.update({"teacher_acc_mean": t_mean, "teacher_acc_std": t_std,
                        "generations": [r["generations"] for r in rs], "promoted": [r["promoted"] for r in rs]})
        rows.append(row)
    return rows


def format_table(rows: list[dict], protocol: dict, meta: dict) -> str:
    head = ["arm", "test accuracy (USB: its EMA model)", "USB: last weights, no EMA", "seeds", "CPU min", "wall min", "student steps"]
    body = []
    for r in rows:
        no_ema = (f"{r['test_acc_no_ema_mean']:.4f} ± {r['test_acc_no_ema_std']:.4f}" if "test_acc_no_ema_mean" in r
                  else "")
        body.append([r["label"], f"{r['test_acc_mean']:.4f} ± {r['test_acc_std']:.4f}", no_ema, str(len(r["seeds"])),
                     f"{r['cpu_min_mean']:.1f}", f"{r['wall_min_mean']:.1f}", ",".join(str(s) for s in r["steps"])])
        if r["arm"] == "ours":
            body.append(["  (its generation-0 teacher)", f"{r['teacher_acc_mean']:.4f} ± {r['teacher_acc_std']:.4f}", "",
                         str(len(r["seeds"])), "", "", ""])
    lines = text_table(head, body)
    p = protocol
    lines += ["", f"protocol: {p['config']} (+ {len(p['overrides'])} override(s)); {p['sizes']['labeled']} labeled, "
              f"{p['sizes']['val']} validation, {p['sizes']['unlabeled']:,} unlabeled, {p['sizes']['test']:,} test images; "
              f"{p['model']['name']}; {p['steps']} student steps at {p['batch_size']} labeled + "
              f"{p['batch_size'] * p['uratio']} unlabeled images (USB uratio {p['uratio']})",
              f"CPU minutes: every process of the arm (Ray included), sampled from /proc; load average at the end "
              f"{meta['load_avg_end'][0]:.1f} on {meta['cpu_count']} cores"]
    return "\n".join(lines)


def figure(rows: list[dict], protocol: dict, path: Path) -> Path:
    """Test accuracy (mean ± std) against CPU minutes, one point per arm; our teacher as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.2))
    for i, r in enumerate(rows):
        if "test_acc_no_ema_mean" in r:  # USB: its last weights (the point) and its EMA model (a cross, if in range)
            ax.errorbar(r["cpu_min_mean"], r["test_acc_no_ema_mean"], yerr=r["test_acc_no_ema_std"], fmt="o", capsize=4,
                        color=f"C{i}", label=f"{r['label']} (last weights)")
            ema_low = r["test_acc_mean"] < min(x.get("teacher_acc_mean", 1.0) for x in rows) - 0.05
            ax.plot(r["cpu_min_mean"], r["test_acc_mean"], "x", color=f"C{i}", ms=8,
                    label=f"{r['label']} (its EMA model" + (f": {r['test_acc_mean']:.2f}, below the axis)" if ema_low else ")"))
            continue
        ax.errorbar(r["cpu_min_mean"], r["test_acc_mean"], yerr=r["test_acc_std"], fmt="o", capsize=4, color=f"C{i}",
                    label=r["label"])
        if r["arm"] == "ours":
            ax.axhline(r["teacher_acc_mean"], ls="--", lw=1, color="gray", label="our generation-0 teacher")
    good = [r.get("test_acc_no_ema_mean", r["test_acc_mean"]) for r in rows] + [r["teacher_acc_mean"] for r in rows
                                                                                  if "teacher_acc_mean" in r]
    ax.set_ylim(min(good) - 0.03, max(good) + 0.02)
    ax.set_xlabel("CPU minutes per run (all processes)")
    ax.set_ylabel(f"test accuracy ({protocol['sizes']['test']:,} images)")
    ax.set_title(f"Fashion-MNIST, {protocol['labels_per_class']} labels a class, {protocol['model']['name']}, "
                 f"{protocol['steps']} student steps", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)
