import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PLATYPUS_PROGRESS", "0")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def make_profile(tmp_path):
    """A validated Profile whose runs/reports/cache live under tmp_path."""
    from platypus_utils.config import Profile

    def _make(**sections):
        raw = {"name": "t", "paths": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports"),
                                      "cache_dir": str(tmp_path / "cache")}}
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key].update(value)
            else:
                raw[key] = value
        return Profile.model_validate(raw)

    return _make
