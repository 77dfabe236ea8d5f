"""The packed-speed benchmark runs and writes its table."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pack_speed_writes_a_row_per_variant_and_k(tmp_path, data_dir):
    spec = importlib.util.spec_from_file_location("pack_speed", REPO / "benchmarks" / "pack_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "p.md"
    assert module.main(["--device", "cpu", "--ks", "1,2", "--variants", "vanilla", "--subset", "256",
                        "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| vanilla |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]
    assert all(float(row.split("|")[3]) > 0 for row in rows)
