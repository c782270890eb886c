"""Draw step time against batch size, one line per contender, from step.py's JSON.

  python bench/step.py --sweep --json bench/results/sweep.json
  python bench/plot.py bench/results/sweep.json -o bench/results/step.png

(``python bench/step.py --sweep --plot PNG`` does both.) Needs matplotlib.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install matplotlib "
                         "(or pip install 'miniflow[bench]')") from None
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    return plt, ticker


def plot_steps(result: dict, path: Path) -> None:
    """One panel per activation; x batch, y median ms per step (log-log), min as a band."""
    plt, ticker = _pyplot()
    panels = defaultdict(lambda: defaultdict(list))
    for r in result["results"]:
        label = r["contender"] if len({x["hidden"] for x in result["results"]}) == 1 \
            else f"{r['contender']} H={r['hidden']}"
        panels[r["activation"]][label].append((r["batch"], r["median_ms"], r["min_ms"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (activation, lines) in zip(axes[0], sorted(panels.items())):
        for label, points in sorted(lines.items()):
            batch, median, low = zip(*sorted(points))
            line, = ax.plot(batch, median, marker="o", label=label)
            ax.fill_between(batch, low, median, color=line.get_color(), alpha=0.15)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms per training step",
               title=f"784-H-10 {activation}, float32")
        batches = sorted({b for points in lines.values() for b, _, _ in points})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))  # 0.5, not 5 x 10^-1
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    machine = result["machine"]
    fig.suptitle(f"{machine['cpu_model']} ({machine['cpus_usable']} cores), "
                 f"{c.blas_summary(machine['blas'])}, malloc={machine['malloc']['policy']}",
                 fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path, nargs="?", default=c.RESULTS_DIR / "step.json",
                   help="results of bench/step.py (default: %(default)s)")
    p.add_argument("-o", "--out", type=Path, default=None, metavar="PNG",
                   help="the image to write (default: the JSON path with .png)")
    args = p.parse_args(argv)
    if not args.json.exists():
        raise SystemExit(f"{args.json} does not exist; run python bench/step.py --sweep first")
    plot_steps(json.loads(args.json.read_text()), args.out or args.json.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
