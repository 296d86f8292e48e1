"""Regenerate the bundled example tables (driftwarden/examples/*.csv).

A fraud model's inputs: the reference month, and a later month in which the transaction
amount grew by ~40 %, the country mix moved (and a new country, PL, appeared), and the
merchant category went missing more often. Everything else is unchanged.

    python examples/make_example.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "driftwarden" / "examples"


def make(n: int, rng: np.random.Generator, drift: bool) -> list[dict[str, object]]:
    amount = rng.lognormal(3.0 + (0.35 if drift else 0.0), 0.8, n)
    age = np.clip(rng.normal(41, 12, n), 18, 90).round()
    tenure = rng.exponential(24, n).round(1)
    hour = rng.integers(0, 24, n)
    p_country = [0.35, 0.25, 0.2, 0.2, 0.0] if not drift else [0.25, 0.2, 0.2, 0.2, 0.15]
    country = rng.choice(["DE", "FR", "ES", "IT", "PL"], n, p=p_country)
    device = rng.choice(["ios", "android", "web"], n, p=[0.4, 0.4, 0.2])
    merchant = rng.choice(["grocery", "travel", "electronics", "fashion"], n)
    merchant_missing = rng.random(n) < (0.15 if drift else 0.01)
    score = 1 / (1 + np.exp(-(0.02 * (amount - 30) - 2)))
    rows = []
    for i in range(n):
        rows.append({
            "amount": round(float(amount[i]), 2), "age": int(age[i]),
            "tenure_months": float(tenure[i]), "hour": int(hour[i]),
            "country": country[i], "device": device[i],
            "merchant_category": "" if merchant_missing[i] else merchant[i],
            "prediction": round(float(score[i]), 4),
        })
    return rows


def write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261128)
    write(OUT / "reference.csv", make(5000, rng, drift=False))
    write(OUT / "current.csv", make(2000, rng, drift=True))
    print(f"wrote {OUT}/reference.csv and current.csv")
