"""Make examples/sample_model/model.npz: a ridge regression on ten features, fitted with numpy alone.

    python examples/train.py

The data are synthetic and seeded, so the file is the same on every run. The model stands in for the legacy
Azure ML sample (scikit-learn's Ridge on the diabetes data): ten numeric features in, one prediction per row out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FEATURES = 10
HERE = Path(__file__).resolve().parent


def train(rows: int = 500, alpha: float = 0.1, seed: int = 7) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    true_coef = np.linspace(-2.0, 3.0, FEATURES)
    y = x @ true_coef + 150.0 + rng.normal(scale=0.5, size=rows)
    # Ridge: centre, then solve (X'X + alpha I) w = X'y.
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc, yc = x - x_mean, y - y_mean
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(FEATURES), xc.T @ yc)
    intercept = float(y_mean - x_mean @ coef)
    return coef, intercept


def main() -> None:
    coef, intercept = train()
    target = HERE / "sample_model" / "model.npz"
    target.parent.mkdir(exist_ok=True)
    np.savez(target, coef=np.round(coef, 6), intercept=np.array(round(intercept, 6)))
    print(f"wrote {target}: intercept {intercept:.3f}, coefficients {np.round(coef, 3).tolist()}")


if __name__ == "__main__":
    main()
