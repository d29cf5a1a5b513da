import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LABELME_EXAMPLES = SHARED / "labelme-examples"

# Tests run on 2 cores next to each other: one intra-op thread pool per process is plenty.
os.environ.setdefault("OMP_NUM_THREADS", "2")

requires_shared = pytest.mark.skipif(
    not LABELME_EXAMPLES.is_dir(), reason="../shared/labelme-examples is not present"
)
