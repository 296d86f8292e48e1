"""A baseline revision stored by `driftwarden baseline fit` (or recorded from a warm-up) is what a
worker monitors with, when its config says `[models.NAME] baseline = "store:..."`."""

from __future__ import annotations

from importlib import resources

import orjson
import pytest

from driftwarden.batch import fit_baseline_file
from driftwarden.cli import main
from driftwarden.config import ConfigError, load_settings
from driftwarden.errors import InputError
from driftwarden.store import Store
from driftwarden.stream.baselines import configured_models
from driftwarden.stream.service import RawMessage, StreamService

EXAMPLES = resources.files("driftwarden") / "examples"


@pytest.fixture
def stored(tmp_path):
    url = f"sqlite:///{tmp_path / 'dw.db'}"
    settings = load_settings(env={"DRIFTWARDEN_DATABASE_URL": url})
    fitted = fit_baseline_file(str(EXAMPLES / "reference.csv"), settings.detection)
    store = Store(url)
    for _ in range(2):  # revisions 1 and 2 of v1
        store.add_baseline("fraud", "1", fitted.to_state(), rows=fitted.n_rows, source="t",
                           actor="test")
    store.close()
    return url, fitted


def _settings(url, ref):
    return load_settings(env={"DRIFTWARDEN_DATABASE_URL": url,
                              "DRIFTWARDEN_MODELS": orjson.dumps({"fraud": {"baseline": ref}})
                              .decode()})


def _monitor(settings, version):
    svc = StreamService(settings, models=configured_models(settings))
    rec = {"model": "fraud", "version": version, "id": "r1", "ts": 1.7e9,
           "features": {"amount": 3.0}}
    svc.handle_predictions([RawMessage(orjson.dumps(rec), [], "p", 0, 0, 1.7e9)])
    svc.finish()  # its slice closes: the merge stage makes the monitor
    return svc.monitors[("fraud", version)]


@pytest.mark.parametrize("ref", ["store:latest", "store:2", "store:1"])
def test_each_version_monitors_with_its_stored_revision(stored, ref):
    url, fitted = stored
    m = _monitor(_settings(url, ref), "1")
    assert m.ready and m.baseline.n_rows == fitted.n_rows == 5000
    assert sorted(m.baseline.specs) == sorted(fitted.specs)
    assert not _monitor(_settings(url, ref), "2").ready  # nothing stored: it warms up


def test_one_versions_revision_serves_every_version(stored):
    url, _ = stored
    assert _monitor(_settings(url, "store:1/latest"), "9").ready


@pytest.mark.parametrize("ref,error", [("store:3", InputError), ("store:2/1", InputError),
                                       ("store:zero", ConfigError), ("store:0", ConfigError),
                                       ("store:/2", ConfigError)])
def test_a_missing_or_malformed_revision_stops_the_start(stored, ref, error):
    url, _ = stored
    with pytest.raises(error):
        configured_models(_settings(url, ref))


def test_the_worker_says_so_in_one_line(stored, tmp_path, capsys):
    url, _ = stored
    cfg = tmp_path / "dw.toml"
    cfg.write_text(f'database_url = "{url}"\n[models.fraud]\nbaseline = "store:7"\n')
    assert main(["worker", "--config", str(cfg), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "revision 7" in err[0], err

