"""The study's page: ``DIR/report/index.html`` (summary over seeds, heatmap, failed trials, every trial)."""

from __future__ import annotations

from pathlib import Path

from .results import group_keys, mean_std, stats_of, summary

def _heatmap(table, keys: list[str], path: Path) -> None:
    """Mean test accuracy over the first two grid fields (``keys[0]`` down, ``keys[1]`` across), as a PNG."""
    import matplotlib

    from noisystudent.io import atomic_path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    piv = table.pivot_table(index=keys[0], columns=keys[1], values="test_acc_mean")
    fig, ax = plt.subplots(figsize=(1.2 * piv.shape[1] + 3, 0.5 * piv.shape[0] + 2))
    im = ax.imshow(piv.values, cmap="viridis")
    ax.set_xticks(range(piv.shape[1]), [str(c) for c in piv.columns])
    ax.set_yticks(range(piv.shape[0]), [str(i) for i in piv.index])
    ax.set_xlabel(keys[1])
    ax.set_ylabel(keys[0])
    for i in range(piv.shape[0]):
        for j in range(piv.shape[1]):
            v = piv.values[i, j]
            if v == v:
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w")
    fig.colorbar(im, label="test accuracy (mean over seeds)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(study_dir: str | Path, rows: list[dict]) -> Path:
    """``DIR/report/index.html``: the summary over seeds (best mean per column in bold), a heatmap of mean
    test accuracy over the first two grid fields (``heatmap.png``), the failed trials and every trial."""
    import html

    import pandas as pd

    from noisystudent.io import write_text

    out = Path(study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = summary(rows)
    parts = ["<html><head><meta charset='utf-8'><title>study</title><style>td,th{padding:2px 8px;text-align:left}"
             "</style></head><body><h1>Study</h1>"]
    if not table.empty:
        keys, stats = group_keys(table), stats_of(table)
        best = {c: table[f"{c}_mean"].max() for c in stats}
        parts.append("<h2>Mean ± std over seeds</h2><table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys)
                     + "".join(f"<th>{c}</th>" for c in stats) + "<th>seeds</th></tr>")
        for _, r in table.iterrows():
            cells = [html.escape(str(r[k])) for k in keys]
            for c in stats:
                txt = mean_std(r[f"{c}_mean"], r[f"{c}_std"])
                cells.append(f"<b>{txt}</b>" if r[f"{c}_mean"] == best[c] else txt)
            cells.append(str(r["seeds"]))
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        if len(keys) >= 2:
            _heatmap(table, keys, out / "heatmap.png")
            parts.append("<h2>Test accuracy</h2><img src='heatmap.png'>")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        parts.append("<h2>Failed trials</h2><ul>" + "".join(f"<li>{html.escape(r['trial'])}: {html.escape(str(r['error']))}</li>"
                                                          for r in failed) + "</ul>")
    parts.append("<h2>Trials</h2>" + pd.DataFrame(rows).to_html(index=False, na_rep="-") + "</body></html>")
    write_text(out / "index.html", "\n".join(parts))
    return out / "index.html"
