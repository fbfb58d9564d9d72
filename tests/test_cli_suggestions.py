"""``sample --index`` takes its schedule from the file, and the commands that errors suggest can be pasted."""

import re
import shlex

from click.testing import CliRunner

from patchdb.cli.main import main
from patchdb.indexing.reader import open_index
from patchdb.store import read_samples


def suggested(output: str) -> list[str]:
    """The ``patchdb ...`` command at the end of a one-line error, as arguments."""
    line = output.strip().splitlines()[-1]
    match = re.search(r"(patchdb (?:build|sample) .*)$", line)
    assert match, line
    words = shlex.split(match.group(1))
    assert words[0] == "patchdb"
    return words[1:]


def test_sample_index_uses_the_recorded_schedule_or_says_the_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["build", "--limit", "12", "--scales", "constant:3", "--recall-k", "8", "--out", "c.h5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["sample", "--index", "c.h5", "-n", "1", "--steps", "20", "-o", "c_s.h5"])
    assert res.exit_code == 0, res.output
    assert read_samples("c_s.h5")["metadata"]["schedule"] == [3] * 20
    res = runner.invoke(main, ["build", "--limit", "12", "--scales", "3", "--recall-k", "8", "--out", "p.h5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["sample", "--index", "p.h5", "-n", "1", "-o", "p_s.h5"])
    assert res.exit_code == 2 and "records no scale schedule" in res.output and "patch sizes 3" in res.output
    args = suggested(res.output)
    assert args[:3] == ["sample", "--index", "p.h5"]
    res = runner.invoke(main, args)  # pasted as is
    assert res.exit_code == 0, res.output


def test_suggested_build_add_carries_the_dataset_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(main, ["build", "--limit", "12", "--only-classes", "1,2", "--scales", "3", "--recall-k", "8",
                               "--out", "a.h5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["sample", "--index", "a.h5", "-s", "3,5", "-n", "1", "-o", "s.h5"])
    assert res.exit_code == 2 and "--add" in res.output
    args = suggested(res.output)
    assert "--limit" in args and "--only-classes" in args
    res = runner.invoke(main, args)  # pasted as is: adds size 5 to the same images
    assert res.exit_code == 0, res.output
    with open_index("a.h5") as f:
        assert f.sizes == (3, 5)
    res = runner.invoke(main, ["sample", "--index", "a.h5", "-s", "3,5", "-n", "1", "-o", "s.h5"])
    assert res.exit_code == 0, res.output
