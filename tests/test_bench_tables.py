"""benchmarks/tables.py: the benchmark tables in README.md and docs/performance.md are the ones
it makes from the committed results (benchmarks/results/default.json), so they cannot drift."""

import copy
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "default.json"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _load_script()


@pytest.fixture(scope="module")
def results():
    return tables.load(RESULTS)


def test_committed_tables_match_committed_results(results):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    performance = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    new_readme, new_performance = tables.update(readme, performance, results)
    hint = "run: python benchmarks/tables.py benchmarks/results/default.json --write"
    assert new_readme == readme, hint
    assert new_performance == performance, hint
    # The blocks are between the markers, each on a line of its own with blank lines around.
    assert f"<!-- bench:summary:start -->\n\n{tables.readme_block(results)}\n\n" \
           "<!-- bench:summary:end -->\n" in readme
    assert f"<!-- bench:table:start -->\n\n{tables.performance_block(results)}\n\n" \
           "<!-- bench:table:end -->\n" in performance


def test_blocks_quote_the_results(results):
    data = copy.deepcopy(results)
    first = data["cases"][0]
    first["time_s"] = {"fastlstm": 12.1e-6, "torch": 203.6e-6, "onnxruntime": 28.2e-6}
    first["speedup_vs_torch"], first["speedup_vs_onnxruntime"] = 16.87, 2.33
    block = tables.performance_block(data)
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == [c["name"] for c in data["cases"]]
    assert "| streaming step | 1, 1, 256, 256 |  | 12.1 us | 203.6 us | 28.2 us | 16.87x | " \
           "2.33x |" in block
    # The geometric mean over every case, computed here from the cases themselves.
    ratios = [c["speedup_vs_torch"] for c in data["cases"] if c.get("speedup_vs_torch")]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    assert f"Geometric mean: {geo:.2f}x torch over the {len(ratios)} cases" in block
    readme = tables.readme_block(data)
    torch_v = data["versions"]["torch"].split("+")[0].rsplit(".", 1)[0]
    assert f"| case | vs torch {torch_v} | vs ONNX Runtime " in readme
    assert "| streaming step (N=1, L=1, H=256) | 16.87x | 2.33x |" in readme
    assert re.search(r"\| batched \(N=16-256, H=128-1024\) \| \d+\.\d\dx-\d+\.\d\dx \| ",
                     readme)


@pytest.mark.parametrize("seconds, text", [
    (None, "n/a"), (3.67e-6, "3.7 us"), (4.765e-4, "476.5 us"), (9.9996e-4, "1 ms"),
    (5.0726e-3, "5.07 ms"), (0.023044, "23 ms"), (0.63357, "634 ms"), (1.234, "1.23 s"),
])
def test_fmt_time(seconds, text):
    assert tables.fmt_time(seconds) == text


@pytest.mark.parametrize("marker", ["<!-- bench:summary:start -->", "<!-- bench:summary:end -->"])
def test_missing_marker_is_a_clear_error(results, marker):
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace(marker, "")
    with pytest.raises(tables.TablesError, match=f"README.md: no {marker} marker"):
        tables.update(readme, (ROOT / "docs" / "performance.md").read_text(encoding="utf-8"),
                      results)


def test_misplaced_markers_are_errors():
    start, end = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
    with pytest.raises(tables.TablesError, match="comes before"):
        tables.replace_block(f"{end}\n{start}\n", "table", "x")
    with pytest.raises(tables.TablesError, match="2 <!-- bench:table:start --> markers"):
        tables.replace_block(f"{start}\n{start}\n{end}\n", "table", "x")
    with pytest.raises(tables.TablesError, match="line of its own"):
        tables.replace_block(f"text {start}\n{end}\n", "table", "x")
    assert tables.replace_block(f"a\n{start}\nold\n{end}\nb\n", "table", "new") == \
        f"a\n{start}\n\nnew\n\n{end}\nb\n"


def test_command_line(tmp_path, capsys):
    readme, performance = tmp_path / "README.md", tmp_path / "performance.md"
    readme.write_text((ROOT / "README.md").read_text(encoding="utf-8"), encoding="utf-8")
    performance.write_text((ROOT / "docs" / "performance.md").read_text(encoding="utf-8"),
                           encoding="utf-8")
    data = json.loads(RESULTS.read_text(encoding="utf-8"))
    data["cases"][0]["speedup_vs_torch"] = 99.0
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data), encoding="utf-8")
    paths = ["--readme", str(readme), "--performance", str(performance)]

    assert tables.main([str(RESULTS), "--check", *paths]) == 0
    assert tables.main([str(other), "--check", *paths]) == 1
    assert tables.main([str(other), "--write", *paths]) == 0
    ort = f"| 99.00x | {data['cases'][0]['speedup_vs_onnxruntime']:.2f}x |"
    assert ort in readme.read_text(encoding="utf-8")
    assert ort in performance.read_text(encoding="utf-8")
    assert tables.main([str(other), "--check", *paths]) == 0

    capsys.readouterr()
    assert tables.main([str(RESULTS)]) == 0  # prints the blocks
    out = capsys.readouterr().out
    assert out.startswith("<!-- bench:summary:start -->\n\n| case | vs torch")
    assert "<!-- bench:table:end -->" in out

    readme.write_text("no markers here\n", encoding="utf-8")
    assert tables.main([str(RESULTS), "--write", *paths]) == 2
    assert "no <!-- bench:summary:start --> marker" in capsys.readouterr().err
