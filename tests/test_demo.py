"""``mixem demo``: every check of the derivation passes and every figure is a PNG."""

from __future__ import annotations

import re

from inference import demo
from inference.cli import main
from inference.demo_checks import Check, Claim

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_FIGURES = {
    "1_restricted_density.png",
    "2_posterior_vs_delta.png",
    "3_estep_voronoi.png",
    "4_mstep_means.png",
    "5_lloyd_vs_sklearn.png",
    "6_elbo_traces.png",
    "6_tempered_to_delta.png",
    "6_soft_em_to_kmeans.png",
}


def test_demo_passes_every_check_and_writes_pngs(tmp_path, capsys):
    code = main(["demo", "--quick", "--out", str(tmp_path)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    lines = [line for line in stdout.splitlines() if line.startswith("[")]
    assert lines and all(" PASS " in line for line in lines), stdout
    claims = {re.match(r"\[(\d+)\]", line).group(1) for line in lines}
    assert claims == {"1", "2", "3", "4", "5", "6"}
    # every check reports the number it measured
    assert all(re.search(r"\d", line.split(":", 1)[1]) for line in lines)
    assert re.search(rf"{len(lines)}/{len(lines)} checks passed, 0 failed, 0 skipped", stdout)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == EXPECTED_FIGURES
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert not list(tmp_path.glob(".*")), "a temporary file was left behind"
    assert (tmp_path / "report.txt").read_text() == stdout


def test_a_failing_check_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    failing = Claim([Check("9", "a claim that does not hold", "FAIL", "diff = 1")], {})
    monkeypatch.setattr(demo, "_claims", lambda quick: [lambda: failing])
    lines: list[str] = []
    assert demo.run_demo(tmp_path, quick=True, report=lines.append) is False
    assert "[9] FAIL  a claim that does not hold: diff = 1" in lines
    assert "0/1 checks passed, 1 failed" in lines[-1]
