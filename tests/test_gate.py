"""``driftwarden gate`` (driftwarden/gate.py): the pre-deployment verdict on a table of both
versions' predictions — its estimates against a computation here, its verdicts on candidates
of known quality, its exit codes, and bad input in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from driftwarden.cli import main
from driftwarden.gate import gate


def evaluation_set(rng, n, flip_worse=0.0, flip_better=0.0, base_acc=0.9, scores=True):
    """Labels, a baseline right ``base_acc`` of the time, and a candidate that turns
    ``flip_worse`` of the baseline's right answers wrong and ``flip_better`` of its wrong
    answers right."""
    y = (rng.random(n) < 0.3).astype(int)
    base_right = rng.random(n) < base_acc
    cand_right = np.where(base_right, rng.random(n) >= flip_worse, rng.random(n) < flip_better)
    base = np.where(base_right, y, 1 - y).astype(float)
    cand = np.where(cand_right, y, 1 - y).astype(float)
    if scores:  # probabilities on the right side of 0.5
        base = np.where(base == 1, 0.5 + rng.random(n) / 2, rng.random(n) / 2)
        cand = np.where(cand == 1, 0.5 + rng.random(n) / 2, rng.random(n) / 2)
    return {"y": y.astype(float), "base": base, "cand": cand}


def write_csv(path, cols, drop_labels=0.0, rng=None):
    names = list(cols)
    n = len(cols[names[0]])
    lines = [",".join(names)]
    for i in range(n):
        cells = []
        for k in names:
            v = cols[k][i]
            hide = k == "y" and rng is not None and rng.random() < drop_labels
            cells.append("" if hide else repr(float(v)))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_estimate_is_the_difference_of_error_rates_computed_here():
    rng = np.random.default_rng(1)
    cols = evaluation_set(rng, 4000, flip_worse=0.02)
    r = gate(cols, baseline="base", candidate="cand", label="y")
    err_b = np.mean((cols["base"] >= 0.5) != (cols["y"] == 1))
    err_c = np.mean((cols["cand"] >= 0.5) != (cols["y"] == 1))
    p = r["performance"]
    assert p["baseline_loss"] == pytest.approx(err_b) and p["candidate_loss"] == pytest.approx(
        err_c)
    assert p["estimate"] == pytest.approx(err_c - err_b)
    assert p["lower"] < p["estimate"] < p["upper"]
    assert r["disagreement"]["estimate"] == pytest.approx(
        np.mean((cols["base"] >= 0.5) != (cols["cand"] >= 0.5)))


@pytest.mark.parametrize("flip_worse, flip_better, verdict, code", [
    (0.05, 0.0, "rollback", 1),       # 4.5 points worse
    (0.0, 0.3, "promote", 0),         # 3 points better
    (0.0, 0.0, "promote", 0),         # the same: within the 1-point margin
])
def test_verdicts_and_exit_codes_on_candidates_of_known_quality(
        tmp_path, capsys, flip_worse, flip_better, verdict, code):
    rng = np.random.default_rng(2)
    f = write_csv(tmp_path / "eval.csv", evaluation_set(rng, 20_000, flip_worse, flip_better),
                  drop_labels=0.5, rng=rng)  # labels known for half of the rows
    got, out, err = run(["gate", str(f), "--baseline", "base", "--candidate", "cand",
                         "--label", "y", "--json"], capsys)
    body = json.loads(out)
    assert (got, body["verdict"], body["signal"]) == (code, verdict, "performance"), body
    assert 9000 < body["labelled"] < 11_000 and body["compared"] == 20_000 and not err


def test_too_few_examples_are_inconclusive_unless_allowed(tmp_path, capsys):
    rng = np.random.default_rng(3)
    f = write_csv(tmp_path / "small.csv", evaluation_set(rng, 300, flip_worse=0.01))
    args = ["gate", str(f), "--baseline", "base", "--candidate", "cand", "--label", "y"]
    code, out, _ = run(args, capsys)
    assert code == 1 and "verdict: inconclusive" in out and "confidence sequence" in out
    assert run(args + ["--allow-inconclusive"], capsys)[0] == 0


def test_without_labels_disagreement_decides(tmp_path, capsys):
    rng = np.random.default_rng(4)
    n = 20_000
    base = rng.random(n)
    for share, verdict, code in ((0.02, "promote", 0), (0.10, "rollback", 1)):
        flip = rng.random(n) < share
        cand = np.where(flip, 1 - base, base)
        f = write_csv(tmp_path / f"shadow-{share}.csv", {"base": base, "cand": cand})
        got, out, _ = run(["gate", str(f), "--baseline", "base", "--candidate", "cand",
                           "--json"], capsys)
        body = json.loads(out)
        assert (got, body["verdict"], body["signal"]) == (code, verdict, "disagreement")
        # the flipped scores are disagreements only where they cross 0.5: all of them here
        assert body["disagreement"]["estimate"] == pytest.approx(
            np.mean((base >= 0.5) != (cand >= 0.5)))


def test_a_regressor_is_judged_on_absolute_error():
    rng = np.random.default_rng(5)
    y = rng.normal(50, 10, 10_000)
    base = y + rng.normal(0, 2, len(y))
    worse = y + rng.normal(0, 3, len(y))
    r = gate({"y": y, "b": base, "c": worse}, baseline="b", candidate="c", label="y")
    assert r["task"] == "regression" and r["verdict"] == "rollback"
    assert r["performance"]["estimate"] == pytest.approx(
        np.mean(np.abs(worse - y)) - np.mean(np.abs(base - y)))
    same = gate({"y": y, "b": base, "c": base + rng.normal(0, 0.01, len(y))},
                baseline="b", candidate="c", label="y")
    assert same["verdict"] == "promote"


def test_class_names_compare_as_text():
    rng = np.random.default_rng(6)
    classes = np.array(["cat", "dog", "owl"])
    y = classes[rng.integers(0, 3, 5000)]
    base = np.where(rng.random(5000) < 0.9, y, classes[rng.integers(0, 3, 5000)])
    r = gate({"y": y, "b": base, "c": base}, baseline="b", candidate="c", label="y")
    assert r["task"] == "classification" and r["verdict"] == "promote"
    assert r["performance"]["baseline_loss"] == pytest.approx(np.mean(base != y))


@pytest.mark.parametrize("args, says", [
    (["--baseline", "nope", "--candidate", "cand"], "no column 'nope'"),
    (["--baseline", "base", "--candidate", "cand", "--label", "lbl"], "no column 'lbl'"),
    (["--baseline", "base", "--candidate", "word", "--label", "y"], "different kinds"),
    (["--baseline", "base", "--candidate", "cand", "--alpha", "2"], "--alpha"),
])
def test_bad_input_is_one_line_and_exit_code_two(tmp_path, capsys, args, says):
    f = tmp_path / "t.csv"
    f.write_text("base,cand,word,y\n0.9,0.8,yes,1\n0.1,0.2,no,0\n")
    code, out, err = run(["gate", str(f)] + args, capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1 and not out


def test_missing_file_and_the_installed_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "driftwarden.cli", "gate", str(tmp_path / "x.csv"),
                        "--baseline", "a", "--candidate", "b"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "file not found" in r.stderr and "Traceback" not in r.stderr
