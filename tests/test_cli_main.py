"""The CLI's layout: lazy subcommands, the installed package name, and the import rules of issue 26."""

import ast
import subprocess
import sys
from pathlib import Path

import click

from patchdb.cli.main import COMMANDS, load_command, main

ROOT = Path(__file__).resolve().parents[1]
#: The commands of issue 26's redesign (others are checked by their own tests).
CORE_COMMANDS = ("sample", "build", "info", "validate", "query", "attribute", "train", "calibrate", "compare")


def test_listed_help_is_each_commands_own():
    """``patchdb --help`` shows, without loading the commands, what each command's own help would show."""
    limit = 80 - 6 - max(len(name) for name in COMMANDS)  # as PatchdbGroup.format_commands at click's width
    for name, text in COMMANDS.items():
        cmd = load_command(name)
        assert isinstance(cmd, click.Command)
        assert click.utils.make_default_short_help(text, limit) == cmd.get_short_help_str(limit), name


def test_help_and_completion_do_not_import_torch_or_commands(tmp_path):
    code = ("import sys\nfrom patchdb.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "from click.shell_completion import ShellComplete\n"
            "items = ShellComplete(main, {}, 'patchdb', '_PATCHDB_COMPLETE').get_completions([], 'sa')\n"
            "assert [i.value for i in items] == ['sample'], items\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('patchdb.cli.') and m != 'patchdb.cli.main']\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "sample" in res.stdout and "compare" in res.stdout


def test_no_top_level_cli_package(tmp_path):
    """Outside the repository nothing named ``cli`` is importable: the folder installs as patchdb.cli."""
    res = subprocess.run([sys.executable, "-c", "import cli"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode != 0 and "No module named 'cli'" in res.stderr


def _imports(path: Path):
    """(module imported, level, inside a function?) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0, id(node) in inside
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and not base:  # from . import x
                for alias in node.names:
                    yield alias.name, node.level, id(node) in inside
            else:
                yield base, node.level, id(node) in inside


def test_cli_commands_do_not_import_each_other():
    commands = {p.stem for p in (ROOT / "cli").glob("*.py")} - {"__init__", "options", "main"}
    for path in (ROOT / "cli").glob("*.py"):
        for module, level, _ in _imports(path):
            name = module.split(".")[-1] if level or module.startswith("patchdb.cli") else None
            assert name not in commands, f"{path.name} imports the command module {module}"


def test_engines_import_neither_evaluation_nor_sampler_nor_cli():
    banned = ("evaluation", "sampler", "generate", "cli", "attribute")
    for folder in ("denoisers", "indexing"):
        for path in (ROOT / "patchdb" / folder).glob("*.py"):
            for module, level, _ in _imports(path):
                parts = module.split(".")
                top = parts[0] if level == 2 else (parts[1] if module.startswith("patchdb.") else None)
                assert top not in banned, f"{folder}/{path.name} imports {module}"


def test_imports_inside_functions_only_for_optional_dependencies():
    """The engines, the index file, evaluation, the sampler and the CLI import at the top; inside a function
    only what is optional or slow to load and rarely needed (plots: matplotlib; run folders)."""
    optional = ("matplotlib", "patchdb.attribution_plots", "patchdb.attribution_page", "click.shell_completion",
                "torchvision", "patchdb.runs")
    files = [ROOT / "patchdb" / f"{name}.py" for name in ("sampler", "generate", "attribute", "store", "plots")]
    for folder in ("denoisers", "indexing"):
        files += (ROOT / "patchdb" / folder).glob("*.py")
    files += [ROOT / "patchdb" / "evaluation" / f"{name}.py"
              for name in ("metrics", "validate", "calibrate", "compare", "factories")]
    files += [ROOT / "cli" / f"{name}.py" for name in ("main", "options", "merge", *CORE_COMMANDS)]
    for path in files:
        for module, _level, inside in _imports(path):
            if inside:
                assert module.startswith(optional), f"{path.relative_to(ROOT)} imports {module} inside a function"


def test_calibrate_does_not_import_compare_and_attribute_imports_no_private_names():
    calibrate = {module for module, _level, _ in _imports(ROOT / "patchdb" / "evaluation" / "calibrate.py")}
    assert "compare" not in calibrate and "patchdb.evaluation.compare" not in calibrate
    tree = ast.parse((ROOT / "patchdb" / "attribute.py").read_text())
    private = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names
               if alias.name.startswith("_") and alias.name != "__version__"]
    assert not private, private
