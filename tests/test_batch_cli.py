"""``driftwarden batch`` and ``driftwarden demo``: output format, values, and every error path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as sst

from driftwarden.cli import main
from driftwarden.detectors import stats

NUMERIC_TESTS = {"psi", "ks", "jensenshannon", "wasserstein", "hellinger"}
CATEGORICAL_TESTS = {"psi", "jensenshannon", "chi2", "hellinger"}


def write_csv(path, cols):
    names = list(cols)
    n = len(cols[names[0]])
    lines = [",".join(names)]
    for i in range(n):
        lines.append(",".join("" if cols[k][i] is None else str(cols[k][i]) for k in names))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tables(tmp_path):
    rng = np.random.default_rng(11)
    ref = {"x": rng.normal(0, 1, 3000).round(6).tolist(),
           "y": rng.exponential(2, 3000).round(6).tolist(),
           "c": rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2]).tolist()}
    cur = {"x": rng.normal(0.5, 1, 1000).round(6).tolist(),
           "y": rng.exponential(2, 1000).round(6).tolist(),
           "c": rng.choice(["a", "b", "c", "d"], 1000, p=[0.5, 0.3, 0.15, 0.05]).tolist(),
           "only_here": [1] * 1000}
    cur["y"][:50] = [None] * 50
    return (write_csv(tmp_path / "ref.csv", ref), write_csv(tmp_path / "cur.csv", cur), ref, cur)


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_report_shape_and_values(capsys, tables):
    ref_path, cur_path, ref, cur = tables
    code, out, err = run(capsys, "batch", "--reference", str(ref_path), "--current",
                         str(cur_path), "--json")
    assert code == 0 and err == ""
    report = json.loads(out)
    assert set(report) == {"drift", "n_reference", "n_current", "features"}
    assert (report["n_reference"], report["n_current"]) == (3000, 1000)
    assert list(report["features"]) == ["x", "y", "c"]  # common columns only
    for f in report["features"].values():
        assert set(f) == {"type", "drift", "tests", "quality"}
        assert set(f["quality"]) == {"missing_ratio", "unseen_ratio", "out_of_range_ratio"}
        expected = NUMERIC_TESTS if f["type"] == "numeric" else CATEGORICAL_TESTS
        assert set(f["tests"]) == expected
    x, y, c = (report["features"][k] for k in "xyc")
    assert x["drift"] and c["drift"] and not y["drift"] and report["drift"]
    # KS and Wasserstein: exactly scipy on the raw columns
    ks = sst.ks_2samp(ref["x"], cur["x"])
    assert x["tests"]["ks"]["statistic"] == pytest.approx(ks.statistic, abs=1e-12)
    assert x["tests"]["ks"]["pvalue"] == pytest.approx(ks.pvalue, rel=1e-9)
    w = sst.wasserstein_distance(ref["x"], cur["x"])
    assert x["tests"]["wasserstein"]["score"] == pytest.approx(w, rel=1e-9)
    assert x["tests"]["wasserstein"]["normalized"] == pytest.approx(
        w / np.std(ref["x"]), rel=1e-6)
    # PSI over the reference's deciles, binned independently with numpy
    edges = np.quantile(ref["x"], np.linspace(0, 1, 11))
    def binned(v):
        v = np.asarray(v)
        inner, _ = np.histogram(v[(v >= edges[0]) & (v <= edges[-1])], bins=edges)
        return [int((v < edges[0]).sum()), *inner, int((v > edges[-1]).sum())]
    assert x["tests"]["psi"]["score"] == pytest.approx(
        stats.psi(binned(ref["x"]), binned(cur["x"])), rel=1e-9)
    # chi-square: scipy on the contingency table with the unseen "d" as its own cell
    table = [[ref["c"].count(k) for k in "abcd"], [cur["c"].count(k) for k in "abcd"]]
    chi = sst.chi2_contingency(table, correction=False)
    assert c["tests"]["chi2"]["statistic"] == pytest.approx(chi.statistic, rel=1e-9)
    assert c["quality"]["unseen_ratio"] == pytest.approx(cur["c"].count("d") / 1000)
    assert y["quality"]["missing_ratio"] == pytest.approx(0.05)


def test_no_drift_on_the_same_distribution_and_parquet_input(capsys, tmp_path):
    rng = np.random.default_rng(12)
    def table(n):
        return pa.table({"x": rng.normal(size=n), "c": rng.choice(["a", "b"], n)})
    pq.write_table(table(4000), tmp_path / "ref.parquet")
    pq.write_table(table(2000), tmp_path / "cur.parquet")
    code, out, _ = run(capsys, "batch", "--reference", str(tmp_path / "ref.parquet"),
                       "--current", str(tmp_path / "cur.parquet"), "--json")
    report = json.loads(out)
    assert code == 0 and report["drift"] is False
    assert report["features"]["x"]["type"] == "numeric"


def test_types_file_overrides_inference(capsys, tables, tmp_path):
    ref_path, cur_path, _, _ = tables
    types = tmp_path / "types.json"
    types.write_text('{"x": "categorical", "c": "categorical"}')
    code, out, _ = run(capsys, "batch", "--reference", str(ref_path), "--current",
                       str(cur_path), "--types", str(types), "--json")
    assert code == 0 and json.loads(out)["features"]["x"]["type"] == "categorical"


def test_table_output(capsys, tables):
    ref_path, cur_path, _, _ = tables
    code, out, _ = run(capsys, "batch", "--reference", str(ref_path), "--current", str(cur_path))
    assert code == 0 and "DRIFT" in out and "2 of 3 features drifted" in out


def error_cases(tmp_path, ref_path):
    (tmp_path / "empty.csv").write_text("x,c\n")
    (tmp_path / "other.csv").write_text("p,q\n1,2\n")
    (tmp_path / "bad.parquet").write_text("not parquet at all")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "badtype.json").write_text('{"x": "text"}')
    (tmp_path / "ragged.csv").write_text("x,c\n1,a\n2,b,c,d\n")
    (tmp_path / "c_numeric.json").write_text('{"c": "numeric"}')
    r = str(ref_path)
    return {
        "declared type does not fit": (["--reference", r, "--current", r, "--types",
                                        str(tmp_path / "c_numeric.json")],
                                       "column 'c' is declared numeric"),
        "missing file": (["--reference", r, "--current", str(tmp_path / "nope.csv")],
                         "file not found"),
        "a directory": (["--reference", r, "--current", str(tmp_path)], "not a file"),
        "not parquet": (["--reference", r, "--current", str(tmp_path / "bad.parquet")],
                        "cannot read"),
        "ragged csv": (["--reference", r, "--current", str(tmp_path / "ragged.csv")],
                       "cannot read"),
        "empty table": (["--reference", r, "--current", str(tmp_path / "empty.csv")],
                        "no rows"),
        "no common columns": (["--reference", r, "--current", str(tmp_path / "other.csv")],
                              "no column in common"),
        "bad flag": (["--reference", r, "--current", r, "--frobnicate"], "No such option"),
        "missing flag": (["--reference", r], "Missing option"),
        "bad budget": (["--reference", r, "--current", r, "--budget", "3"], "budget"),
        "types not json": (["--reference", r, "--current", r, "--types",
                            str(tmp_path / "bad.json")], "not valid JSON"),
        "bad type": (["--reference", r, "--current", r, "--types",
                      str(tmp_path / "badtype.json")], "numeric"),
    }


def test_every_error_is_one_line_and_exit_2(capsys, tables, tmp_path):
    ref_path = tables[0]
    for case, (args, message) in error_cases(tmp_path, ref_path).items():
        code, out, err = run(capsys, "batch", *args)
        assert code == 2, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, (case, err)
        assert lines[0].startswith("driftwarden: error:"), case


def test_installed_command_end_to_end(tables, tmp_path):
    """The real console script: the README's demo command, and an error path."""
    exe = [sys.executable, "-m", "driftwarden.cli"]
    demo = subprocess.run([*exe, "demo", "--batch", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert demo.returncode == 0, demo.stderr
    report = json.loads(demo.stdout)
    assert report["drift"] and report["features"]["amount"]["drift"]
    assert report["features"]["country"]["drift"] and not report["features"]["device"]["drift"]
    assert report["features"]["merchant_category"]["quality"]["missing_ratio"] > 0.1
    bad = subprocess.run([*exe, "batch", "--reference", str(tables[0]), "--current",
                          str(tmp_path / "missing.csv")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"driftwarden: error: file not found: {tmp_path / 'missing.csv'}"]


def test_baseline_fit_refuses_a_declared_type_that_does_not_fit(capsys, tables, tmp_path):
    """It used to store a broken baseline silently."""
    ref_path = tables[0]
    (tmp_path / "types.json").write_text('{"c": "numeric"}')
    code, _, err = run(capsys, "baseline", "fit", "--model", "m", "--version", "1", "--data",
                       str(ref_path), "--types", str(tmp_path / "types.json"), "--config",
                       str(_config(tmp_path)))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "column 'c' is declared numeric" in lines[0], err
    from driftwarden.store import Store

    store = Store(f"sqlite:///{tmp_path / 'dw' / 'driftwarden.db'}")
    assert store.models() == []
    store.close()


def _config(tmp_path):
    p = tmp_path / "dw.toml"
    p.write_text(f'data_dir = "{tmp_path / "dw"}"\n')
    return p
