"""aemodels.files: the one atomic writer every table, state, status and download goes through."""
import pytest

from aemodels.files import ReplacingFile, write_atomic, write_text_atomic


@pytest.mark.parametrize("durable", [True, False])
def test_a_write_replaces_the_file_whole(tmp_path, durable):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    write_text_atomic(target, "new\n", durable=durable)
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_failed_write_leaves_the_previous_file_and_no_temp_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")

    def fails_halfway(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, fails_halfway)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_a_streamed_file_appears_whole_on_close_and_a_failed_one_not_at_all(tmp_path):
    target = tmp_path / "experiment_state.json"
    target.write_text("old\n")
    out = ReplacingFile(target)
    out.write(b"new")
    assert target.read_text() == "old\n"  # nothing shows before close
    out.write(b"\n")
    out.close()
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == [target.name]

    with pytest.raises(RuntimeError):
        with ReplacingFile(target) as out:
            out.write(b"half")
            raise RuntimeError("the copy's source went away")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_every_writer_gives_the_permissions_of_a_plain_open(tmp_path):
    # Others read a shared results folder: a table must not keep the temp file's 0600.
    (tmp_path / "plain").write_text("")
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    write_text_atomic(tmp_path / "best_config.yaml", "x: 1\n")
    write_atomic(tmp_path / "trials.parquet", lambda tmp: open(tmp, "w").close())
    with ReplacingFile(tmp_path / "experiment_state.json") as out:
        out.write(b"{}")
    for name in ("best_config.yaml", "trials.parquet", "experiment_state.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
