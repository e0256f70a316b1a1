"""The example configuration files in config/ are valid and mean what their comments say."""

from __future__ import annotations

import os

import pytest

from sje.config import MasterSettings, MonitorSettings, WorkerSettings, load_settings
from sje.models import parse_job
from sje.submitfile import job_from_file
from tests.support import ROOT

CONFIG = ROOT / "config"


@pytest.fixture(autouse=True)
def _no_sje_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SJE_")]:
        monkeypatch.delenv(name)


def test_example_master_file_loads_with_its_documented_values() -> None:
    settings = load_settings(MasterSettings, CONFIG / "master.yaml")
    assert (settings.bind_address, settings.port) == ("127.0.0.1", 7070)
    assert settings.lease_timeout == 30.0
    assert settings.result_ttl == 86_400.0


def test_example_worker_file_loads_with_its_documented_values() -> None:
    settings = load_settings(WorkerSettings, CONFIG / "worker.yaml")
    assert settings.queues == ["default"]
    assert settings.tasks == ["sje.examples"]
    assert settings.heartbeat_interval == 2.0


def test_example_monitor_file_loads_with_its_documented_values() -> None:
    settings = load_settings(MonitorSettings, CONFIG / "monitor.yaml")
    assert (settings.bind_address, settings.port) == ("127.0.0.1", 7071)
    assert (settings.auth, settings.key_prefix) == ("token", "sje")
    assert settings.broker_url is None  # the embedded SQLite default


@pytest.mark.parametrize("name", ["primes", "one-range", "pauses"])
def test_every_job_of_the_example_submit_file_is_valid(name: str) -> None:
    spec = parse_job(job_from_file(CONFIG / "submit.yaml", name, {}))
    assert spec.task.startswith("sje.examples.")
    assert spec.name == name
