import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# the raw MIT-BIH records (PhysioNet's mitdb, 48 records): MITDB_DIR, else beside the clone
MITDB = os.environ.get("MITDB_DIR") or os.path.join(ROOT, "..", "shared", "data", "mitdb")
KAGGLE_ROWS = os.path.join(ROOT, "tests", "data", "kaggle_format")   # committed real rows

if os.environ.get("CI") == "true" and not os.path.isdir(MITDB):
    # under CI a missing folder must fail the run, not skip the real-data tests
    raise pytest.UsageError(f"CI=true but the raw MIT-BIH records are not at {MITDB}: set "
                            "MITDB_DIR to PhysioNet's mitdb folder")
needs_mitdb = pytest.mark.skipif(not os.path.isdir(MITDB),
                                 reason=f"raw MIT-BIH records not found at {MITDB} (set MITDB_DIR)")
needs_kaggle_rows = pytest.mark.skipif(not os.path.isdir(KAGGLE_ROWS),
                                       reason=f"real Kaggle rows not found at {KAGGLE_ROWS}")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """A data dir holding the cache of the committed real sample."""
    import preprocess
    d = str(tmp_path_factory.mktemp("ecg"))
    preprocess.prepare(d, sample=True)
    return d


@pytest.fixture(scope="session")
def sample_cache(sample_dir):
    import preprocess
    return preprocess.load_cache(sample_dir, sample=True)


@pytest.fixture(scope="session")
def wfdb_dir(tmp_path_factory):
    """The full --wfdb rebuild of ../shared/data/mitdb (built once per session)."""
    if not os.path.isdir(MITDB):
        pytest.skip(f"raw MIT-BIH records not found at {MITDB}")
    import preprocess
    d = str(tmp_path_factory.mktemp("wfdb"))
    assert preprocess.main(["--wfdb", MITDB, "--data-dir", d]) == 0
    return d
