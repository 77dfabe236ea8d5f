"""What a notebook pays to read a sweep's tables: `from sweep import load_results` imports neither Ray nor torch."""
import json
import subprocess
import sys

import pytest

IMPORTED = ("import json, sys\nfrom sweep import load_results\n"
            "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")


@pytest.fixture(scope="module")
def imported() -> set[str]:
    """The top-level packages a fresh interpreter holds after importing load_results."""
    out = subprocess.run([sys.executable, "-c", IMPORTED], capture_output=True, text=True, check=True, timeout=300)
    return set(json.loads(out.stdout))


def test_reading_the_tables_imports_no_ray(imported):
    assert "ray" not in imported and "tensorboardX" not in imported


def test_reading_the_tables_imports_no_torch(imported):
    assert "torch" not in imported and "torchvision" not in imported
