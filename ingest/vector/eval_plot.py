"""`eval --plot`: recall against latency, one curve per k across the search list sweep (matplotlib, the `plot`
extra). The figure is 8 × 5 inches at 100 dpi: an 800 × 500 PNG."""

from __future__ import annotations

from pathlib import Path

from ingest.core.errors import UsageError
from ingest.vector.eval import EvalResult

WIDTH_IN, HEIGHT_IN, DPI = 8.0, 5.0, 100


def plot_recall_latency(result: EvalResult, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: install the plot extra: pip install .[plot]") from None
    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    for k in result.ks:
        xs = [p.p50_ms for p in result.points]
        ys = [p.recall[k] for p in result.points]
        ax.plot(xs, ys, marker="o", label=f"recall@{k}")
        for p, x, y in zip(result.points, xs, ys, strict=True):
            ax.annotate(f"L={p.search_list}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.axvline(result.brute_force_p50_ms, color="grey", linestyle="--", label="brute force p50")
    ax.set_xlabel("p50 latency (ms), concurrency 1")
    ax.set_ylabel("recall")
    ax.set_title(f"{result.index}: recall vs latency over hnsw_candidate_list_size_for_search")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as exc:
        raise UsageError(f"cannot write --plot {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
