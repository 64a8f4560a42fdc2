"""Draw docs/figures/synthetic.png: sample images of the `synthetic` source, one row per class.

Rows are grouped by superclass (two superclasses, their five classes each), so one can see
that sibling classes look alike and classes of different superclasses do not.
Run: `.venv/bin/python docs/synthetic_figure.py`.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kdlib.data.sources.synthetic import make_synthetic  # noqa: E402


def main(out: Path = Path(__file__).parent / "figures" / "synthetic.png", per_class: int = 6) -> None:
    ds = make_synthetic(seed=0, num_train_per_class=40, num_test_per_class=20, image_size=32)
    superclasses = [0, 1]
    classes = [c for s in superclasses for c in (ds.coarse_of_class == s).nonzero().flatten().tolist()]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.1, len(classes) * 1.1))
    for row, c in enumerate(classes):
        images = ds.x_train[ds.y_train == c][:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.imshow(images[col].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"super {int(ds.coarse_of_class[c])}\nclass {c}", fontsize=7)
    fig.suptitle("synthetic source (32 px here; the default study uses 8 px)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
