"""Comparing guide families: ``inference.compare`` and ``mixem compare``."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import blobs

from inference.cli import main
from inference.compare import compare, plot_compare, summary, trace_rows
from inference.em import fit
from inference.errors import MixemError
from inference.guides import GUIDE_SYNTAX, Categorical, Delta, parse_guide
from inference.init import kmeans_plusplus
from models import RestrictedGMM

PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Recording:
    """A user-defined family (the protocol is all it needs): Delta, keeping every table seen."""

    tables: list = field(default_factory=list, compare=False)
    name: str = "recording"
    hard: bool = True

    def e_step(self, log_joint):
        self.tables.append(log_joint.clone())
        return Delta().e_step(log_joint)


def setup(seed=0, n=150, k=3):
    x = blobs(n, k, 2, seed=seed, spread=2.0)
    return x, kmeans_plusplus(x, k, torch.Generator().manual_seed(seed))


def test_every_guide_starts_from_the_same_parameters_and_the_model_is_untouched():
    x, init = setup()
    model = RestrictedGMM(init)
    spies = [Recording(name=f"spy{i}") for i in range(2)]
    results = compare(
        model, x, [spies[0], "categorical", "topk:2", "sampled", spies[1]], max_iter=4
    )
    assert list(results) == ["spy0", "categorical", "topk:2", "sampled", "spy1"]
    assert torch.equal(model.locs.detach(), init)  # the caller's model is not fitted
    torch.testing.assert_close(spies[0].tables[0], spies[1].tables[0], rtol=0, atol=0)
    evidence = {label: r.trace[0].log_evidence for label, r in results.items()}
    # the same parameters: the same log evidence, to the rounding of two ways of summing it
    # (the fused pass for categorical, a table per chunk for the others)
    first = evidence["spy0"]
    assert all(abs(v - first) <= 1e-12 * abs(first) for v in evidence.values()), evidence
    assert len({id(r.model) for r in results.values()}) == len(results)
    assert results["categorical"].trace[0].kl_gap == pytest.approx(0.0, abs=1e-9)
    assert results["spy0"].trace[0].kl_gap > 0


def test_each_comparison_equals_a_separate_fit_from_the_same_start():
    x, init = setup(seed=1)
    results = compare(lambda: RestrictedGMM(init), x, ["delta", "categorical"], max_iter=20)
    for label, family in (("delta", Delta()), ("categorical", Categorical())):
        alone = fit(RestrictedGMM(init), x, family, max_iter=20)
        assert [r.elbo for r in results[label].trace] == [r.elbo for r in alone.trace]
        assert torch.equal(results[label].model.locs, alone.model.locs)


def test_sampled_in_a_comparison_is_seeded_by_compare():
    x, init = setup(seed=2)
    runs = [
        compare(RestrictedGMM(init), x, ["sampled"], max_iter=3, seed=s)["sampled"]
        for s in (4, 4, 5)
    ]
    assert [r.elbo for r in runs[0].trace] == [r.elbo for r in runs[1].trace]
    assert [r.elbo for r in runs[0].trace] != [r.elbo for r in runs[2].trace]
    direct = fit(RestrictedGMM(init), x, parse_guide("sampled", 3, seed=4), max_iter=3)
    assert [r.elbo for r in runs[0].trace] == [r.elbo for r in direct.trace]


def test_rows_summary_and_plot(tmp_path):
    x, init = setup(seed=3)
    results = compare(RestrictedGMM(init), x, ["delta", "tempered:0.5", "anneal:4:1:3"], max_iter=6)
    rows = trace_rows(results)
    assert list(rows[0])[:7] == [
        "guide",
        "iteration",
        "elbo",
        "log_evidence",
        "kl_gap",
        "n_changed",
        "n_relocated",
    ]
    assert len(rows) == sum(len(r.trace) for r in results.values())
    assert [row["guide"] for row in rows if row["iteration"] == 0] == list(results)
    final = summary(results)
    for label, result in results.items():
        assert final[label]["n_iter"] == result.n_iter
        assert final[label]["elbo"] == result.trace[-1].elbo
    plot_compare(results, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("guides", "message"),
    [
        ([], "no guide"),
        (["delta", "delta"], "listed twice"),
        (["delta", "topk:4"], "1 <= k <= K = 3"),
        (["anneal:1:2:3"], "T0:T1:steps"),
    ],
)
def test_bad_guide_lists_fail_before_any_fit(guides, message):
    x, init = setup()
    with pytest.raises(MixemError, match=message):
        compare(RestrictedGMM(init), x, guides)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def compare_args(out, *extra):
    return [
        "compare",
        "--model",
        "restricted-gmm",
        "--k",
        "3",
        "--data",
        "builtin:iris",
        "--out",
        str(out),
        "--max-iter",
        "8",
        *extra,
    ]


def test_compare_cli_writes_trace_summary_and_plot(tmp_path, capsys):
    out = tmp_path / "cmp"
    guides = "delta,categorical,tempered:0.5,topk:2,sampled"
    code, stdout, _ = run(capsys, *compare_args(out, "--guides", guides, "--anneal", "5:1:4"))
    assert code == 0, stdout
    assert {p.name for p in out.iterdir()} == {"trace.csv", "summary.json", "compare.png", "guides"}
    saved = {p.name for p in (out / "guides").iterdir()}
    assert saved == {name.replace(":", "_") for name in [*guides.split(","), "anneal:5:1:4"]}
    with (out / "trace.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "guide",
        "iteration",
        "elbo",
        "log_evidence",
        "kl_gap",
        "n_changed",
        "n_relocated",
        "seconds",
    ]
    names = [*guides.split(","), "anneal:5:1:4"]
    summary_json = json.loads((out / "summary.json").read_text())
    assert list(summary_json["guides"]) == names
    for name in names:
        mine = [r for r in rows if r["guide"] == name]
        assert [int(r["iteration"]) for r in mine] == list(range(len(mine)))
        assert len(mine) == summary_json["guides"][name]["n_iter"] + 1 <= 9
        assert float(mine[-1]["elbo"]) == pytest.approx(summary_json["guides"][name]["elbo"])
    first = [float(r["log_evidence"]) for r in rows if r["iteration"] == "0"]
    # one start for all: one log evidence, to the rounding of two ways of summing it (the
    # fused pass of delta and categorical, a table per chunk for the others)
    assert max(first) - min(first) <= 1e-12 * abs(first[0])
    assert (out / "compare.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guides", "delta,topk:4"], "1 <= k <= K = 3"),
        (["--guides", "delta,tempered:0"], "T a finite number > 0"),
        (["--guides", "delta,tempered:-1"], "T a finite number > 0"),
        (["--guides", "topk:abc"], "1 <= k <= K = 3"),
        (["--guides", "nope"], "unknown guide 'nope'"),
        (["--guides", "delta,,categorical"], "unknown guide ''"),
        (["--anneal", "1:5:3"], "T0:T1:steps"),
    ],
)
def test_compare_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "summary.json").write_text("previous run")
    code, _, stderr = run(capsys, *compare_args(out, *extra), "--force")  # a non-empty --out
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("mixem: error: ") and message in stderr
    assert [p.name for p in out.iterdir()] == ["summary.json"]


@pytest.mark.parametrize(
    ("extra", "label"),
    [
        (["--guide", "categorical"], "categorical"),
        (["--guide", "tempered:0.50"], "tempered:0.5"),
        (["--guide", "topk:2"], "topk:2"),
        (["--guide", "sampled"], "sampled"),
        (["--anneal", "4:0.5:3"], "anneal:4:0.5:3"),
    ],
)
def test_fit_cli_accepts_every_family(tmp_path, capsys, extra, label):
    out = tmp_path / "fit"
    argv = compare_args(out, *extra)
    argv[0] = "fit"
    code, stdout, _ = run(capsys, *argv)
    assert code == 0 and f"restricted-gmm / {label}" in stdout
    summary_json = json.loads((out / "summary.json").read_text())
    assert summary_json["guide"] == label and summary_json["n_iter"] <= 8
    labels = np.load(out / "labels.npy")
    assert labels.shape == (150,) and set(labels.tolist()) <= {0, 1, 2}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--guide", "tempered:0"], "T a finite number > 0"),
        (["--guide", "topk:4"], "1 <= k <= K = 3"),
        (["--guide", "topk:2", "--anneal", "4:1:3"], "not allowed with argument"),
        (["--anneal", "4:0:3"], "T0:T1:steps"),
    ],
)
def test_fit_cli_guide_errors_are_one_line_exit_2(tmp_path, capsys, extra, message):
    argv = compare_args(tmp_path / "o", *extra)
    argv[0] = "fit"
    code, _, stderr = run(capsys, *argv)
    assert code == 2 and stderr.count("\n") == 1 and message in stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["compare", "fit"])
def test_help_shows_the_guide_options_with_defaults(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    # argparse may wrap a line after a hyphen ("amortised-\ndelta"): undo that too.
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    assert "--anneal" in text and "(default: none)" in text
    assert " ".join(GUIDE_SYNTAX.split()) in text
    if command == "compare":
        assert "--guides" in text and "(default: delta,categorical)" in text
    else:
        assert "--guide" in text and "(default: delta)" in text


def test_readme_compare_example_runs(tmp_path, monkeypatch, capsys):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Guide families", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_compare"})
    printed = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert list(printed) == [
        "delta",
        "categorical",
        "tempered:0.5",
        "topk:1",
        "sampled",
        "anneal:4:1:10",
    ]
    # topk:1 is delta, iteration by iteration (delta's sums come from the fused pass, topk's
    # from a table per chunk: equal to rounding)
    delta, topk1 = printed["delta"].split(), printed["topk:1"].split()
    assert delta[0] == topk1[0]
    assert [float(v) for v in delta[1:]] == pytest.approx([float(v) for v in topk1[1:]], rel=1e-12)
    _, elbo, evidence = (float(v) for v in printed["categorical"].split())
    assert elbo == pytest.approx(evidence, rel=1e-12)
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG
