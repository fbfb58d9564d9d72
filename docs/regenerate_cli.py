"""Regenerate the --help blocks of docs/cli.md after changing an option.

    python docs/regenerate_cli.py      # from the repository root

Each '## patchdb X' / '### patchdb X Y' heading followed by a code block gets that command's current
--help (80-column terminal, as the committed blocks were made)."""

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from patchdb.cli.main import main

WIDTH = 78


def regenerate(path: Path) -> None:
    lines = path.read_text().split("\n")
    out, i = [], 0
    while i < len(lines):
        out.append(lines[i])
        m = re.match(r"^#{2,3} (patchdb(?: [a-z-]+)*)$", lines[i])
        if m and i + 2 < len(lines) and lines[i + 2] == "```":
            args = m.group(1).split()[1:] + ["--help"]
            res = CliRunner().invoke(main, args, terminal_width=WIDTH, prog_name="patchdb")
            if res.exit_code:
                sys.exit(f"patchdb {' '.join(args)} failed: {res.output}")
            end = lines.index("```", i + 3)
            out += [lines[i + 1], "```", *res.output.rstrip("\n").split("\n"), "```"]
            i = end + 1
            continue
        i += 1
    path.write_text("\n".join(out))


if __name__ == "__main__":
    regenerate(Path(__file__).resolve().parent / "cli.md")
