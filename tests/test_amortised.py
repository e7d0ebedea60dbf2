"""The amortised guide family: an encoder q(z | x) trained on the ELBO at fixed theta, its
amortisation gap in every record, its encoder saved with the fit and used by predict, and
the same guide under Pyro's own SVI."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from torch import nn

from inference import fit
from inference.cli import main
from inference.em import e_step
from inference.enumerate import log_joint
from inference.errors import MixemError
from inference.estimator import MixtureEM
from inference.guides import Amortised, Categorical, Delta, parse_guide
from inference.guides.amortised_encoder import MLPEncoder
from inference.guides.amortised_train import minibatches
from inference.runner import SIGNAL_AFTER_ENV
from models import RestrictedGMM

CORNERS = torch.tensor([[-6.0, -6.0], [-6.0, 6.0], [6.0, -6.0], [6.0, 6.0]], dtype=torch.float64)


def corner_blobs(n: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """(n, 2) points around four centres 12 apart (spread 1: well separated)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (n,), generator=g)
    return CORNERS[labels] + spread * torch.randn(n, 2, generator=g, dtype=torch.float64)


def start(x: torch.Tensor) -> RestrictedGMM:
    """A restricted GMM at the first point of each corner's blob, a good start."""
    nearest = ((x[:, None] - CORNERS[None]) ** 2).sum(-1).argmin(1)
    return RestrictedGMM(torch.stack([x[nearest == c][0] for c in range(4)]).clone())


def exact_elbo(model: RestrictedGMM, x: torch.Tensor) -> float:
    """The ELBO of the exact posterior: log p(X | theta), from the table."""
    return float(log_joint(model, x).logsumexp(1).sum())


@pytest.fixture(scope="module")
def blob_fit():
    x = corner_blobs(2000, seed=11)
    family = Amortised(seed=3)  # the default settings: 100 Adam steps per E-step
    return x, family, fit(start(x), x, family, max_iter=30, tol=0.0)


def test_the_gap_is_the_exact_elbo_less_the_encoders_at_every_record(blob_fit):
    x, _family, result = blob_fit
    for record in result.trace:
        assert record.amortisation_gap >= 0.0
        # the soft family's best member is the posterior: its gap is the KL gap
        assert record.amortisation_gap == pytest.approx(record.kl_gap, rel=1e-9, abs=1e-9)
    # at the final theta, against the categorical family's own E-step
    best = e_step(result.model, Categorical(), x).elbo
    final = result.trace[-1]
    assert best == pytest.approx(exact_elbo(result.model, x), rel=1e-12)
    assert final.elbo <= best
    assert best - final.elbo == pytest.approx(final.amortisation_gap, rel=1e-6, abs=1e-9)


def test_the_gap_closes_on_well_separated_blobs(blob_fit):
    x, _, result = blob_fit
    gaps = [record.amortisation_gap / x.shape[0] for record in result.trace]
    assert gaps[0] > 1e-2  # an untrained start is far from the posterior ...
    assert gaps[-1] < 1e-3  # ... and training closes the gap (nats per point)


def test_the_encoder_labels_held_out_points_as_the_posterior_does(blob_fit):
    _, family, result = blob_fit
    held_out = corner_blobs(3000, seed=99)
    encoded = e_step(result.model, family, held_out)  # one forward pass, no training
    exact = e_step(result.model, Categorical(), held_out)
    assert float((encoded.labels == exact.labels).double().mean()) >= 0.99


def test_predicting_does_not_train(blob_fit):
    x, family, result = blob_fit
    before = {k: v.clone() for k, v in family.trained_encoder.state_dict().items()}
    first = e_step(result.model, family, x[:500])
    second = e_step(result.model, family, x[:500])
    torch.testing.assert_close(first.q.weights, second.q.weights, rtol=0, atol=0)
    for name, value in family.trained_encoder.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


@pytest.mark.parametrize("delta", [False, True])
def test_on_overlapping_data_the_gap_is_reported(delta):
    x = corner_blobs(600, seed=5, spread=5.0)
    family = Amortised(hidden=8, steps=10, seed=1, delta=delta)
    result = fit(start(x), x, family, max_iter=6, tol=0.0)
    gaps = np.array([record.amortisation_gap for record in result.trace])
    assert np.isfinite(gaps).all() and (gaps >= 0).all() and gaps[-1] > 0
    if delta:  # one-hot q: its gap is to the Delta family's best member at the same theta
        best = e_step(result.model, Delta(), x).elbo
        assert best - result.trace[-1].elbo == pytest.approx(gaps[-1], rel=1e-9, abs=1e-9)
        assert result.q.weights.shape[1] == 1 and family.hard


def test_a_linear_encoder_and_a_users_module_are_trained_as_the_mlp():
    x = corner_blobs(800, seed=2)
    linear = fit(start(x), x, Amortised(hidden=0, steps=40), max_iter=5, tol=0.0)
    assert isinstance(linear.guide.trained_encoder.layers, nn.Linear)
    mine = nn.Sequential(nn.Linear(2, 4)).double()
    weights = mine[0].weight.detach().clone()
    result = fit(start(x), x, Amortised(encoder=mine, steps=40), max_iter=5, tol=0.0)
    assert result.trace[-1].amortisation_gap < result.trace[0].amortisation_gap
    torch.testing.assert_close(mine[0].weight, weights, rtol=0, atol=0)  # the given one: as it was
    wrong = Amortised(encoder=nn.Linear(2, 3).double())
    with pytest.raises(MixemError, match=r"logits \(n, K\) = \(800, 4\), got \(800, 3\)"):
        fit(start(x), x, wrong, max_iter=1)


def test_the_same_seed_gives_the_same_fit():
    x = corner_blobs(400, seed=4)
    a = fit(start(x), x, Amortised(steps=5, batch_size=64, seed=7), max_iter=3, tol=0.0)
    b = fit(start(x), x, Amortised(steps=5, batch_size=64, seed=7), max_iter=3, tol=0.0)
    assert [r.elbo for r in a.trace] == [r.elbo for r in b.trace]
    order = minibatches(10, 4, 5, torch.Generator().manual_seed(0))
    assert [len(index) for index in order] == [4] * 5
    assert sorted(torch.cat(order[:2]).tolist() + order[2][:2].tolist()) == list(range(10))


def test_the_pyro_guide_is_the_same_elbo_and_trains_under_svi():
    x = corner_blobs(300, seed=8)
    model = start(x)
    family = Amortised(hidden=4, steps=0, seed=2)
    guide = family.pyro_guide(x, 4)
    ours = e_step(model, family, x).elbo
    with torch.no_grad():
        loss = TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, x)
    assert -loss == pytest.approx(ours, rel=1e-10)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(x) for _ in range(40)]
    assert losses[-1] < losses[0]
    assert any(name.startswith("amortised_encoder") for name in pyro.get_param_store())


def test_bad_settings_and_paths_are_one_line_errors():
    with pytest.raises(MixemError, match="steps >= 0"):
        Amortised(steps=-1)
    with pytest.raises(MixemError, match="lr > 0"):
        Amortised(lr=0.0)
    with pytest.raises(MixemError, match="HIDDEN an integer >= 0"):
        parse_guide("amortised:-2", 3)
    assert parse_guide("amortised-delta:5", 3).name == "amortised-delta:5"
    with pytest.raises(MixemError, match="not a function of the log-joint table"):
        Amortised().e_step(torch.zeros(2, 3))


def test_the_estimator_trains_a_copy_per_fit_and_predicts_with_it():
    x = corner_blobs(600, seed=6).numpy()
    given = Amortised(steps=30, seed=1)
    est = MixtureEM(guide=given, n_components=4, random_state=0, max_iter=8).fit(x)
    assert given.trained_encoder is None and est.guide_.trained_encoder is not None
    logits = est.guide_.trained_encoder(torch.as_tensor(x))
    np.testing.assert_array_equal(est.predict(x), logits.argmax(1).numpy())


def _fit_argv(out, *extra):
    return [
        "fit",
        "--model",
        "restricted-gmm",
        "--guide",
        "amortised:8",
        "--k",
        "3",
        "--data",
        "builtin:blobs",
        "--out",
        str(out),
        "--quiet",
        "--encoder-steps",
        "20",
        *extra,
    ]


def test_the_cli_saves_the_encoder_and_predict_uses_it(tmp_path, capsys):
    assert main(_fit_argv(tmp_path / "fit", "--max-iter", "5", "--tol", "0")) == 0
    header = (tmp_path / "fit" / "trace.csv").read_text().splitlines()[0]
    assert header.endswith(",amortisation_gap")
    last_gap = float((tmp_path / "fit" / "trace.csv").read_text().splitlines()[-1].split(",")[-1])
    summary = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert summary["amortisation_gap"] == pytest.approx(last_gap, rel=1e-12)
    saved = torch.load(tmp_path / "fit" / "encoder.pt", weights_only=True)
    assert saved["architecture"] == {"kind": "mlp", "d": 2, "k": 3, "hidden": 8}
    encoder = MLPEncoder(2, 3, 8).double()
    encoder.load_state_dict(saved["state_dict"])
    new = tmp_path / "new.npy"
    rows = np.random.default_rng(0).normal(size=(50, 2)) * 4
    np.save(new, rows)
    argv = ["predict", "--fit", str(tmp_path / "fit"), "--data", str(new)]
    assert main([*argv, "--out", str(tmp_path / "pred")]) == 0
    probs = torch.softmax(encoder(torch.as_tensor(rows)), 1).detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "pred" / "responsibilities.npy"), probs, 1e-12)
    labels = np.load(tmp_path / "pred" / "labels.npy")
    np.testing.assert_array_equal(labels, probs.argmax(1))
    assert json.loads((tmp_path / "pred" / "predict.json").read_text())["guide"] == "amortised:8"


def test_the_cli_refuses_what_the_encoder_cannot_do(tmp_path, capsys):
    argv = _fit_argv(tmp_path / "x")
    assert main([*argv, "--batch-size", "100"]) == 2
    assert "drop --stream, --batch-size and --distributed" in capsys.readouterr().err
    delta = [a if a != "amortised:8" else "delta" for a in argv]
    assert main(delta) == 2
    assert "--encoder-steps applies to an amortised guide" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                "--model",
                "restricted-gmm",
                "--k",
                "3",
                "--data",
                "builtin:blobs",
                "--out",
                str(tmp_path / "d"),
                "--quiet",
                "--max-iter",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--fit",
                str(tmp_path / "d"),
                "--data",
                "builtin:blobs",
                "--guide",
                "amortised",
            ]
        )
        == 2
    )
    assert "only a fit with an amortised guide saves its encoder" in capsys.readouterr().err


def test_resume_continues_from_the_saved_encoder(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setenv(SIGNAL_AFTER_ENV, "SIGINT:2")
    assert main(_fit_argv(run, "--max-iter", "6", "--tol", "0")) != 0
    monkeypatch.delenv(SIGNAL_AFTER_ENV)
    cut = torch.load(run / "encoder.pt", weights_only=True)["state_dict"]
    # with no training steps the resumed fit's encoder is the interrupted one, unchanged
    resumed = [a if a != "20" else "0" for a in _fit_argv(run, "--max-iter", "6", "--tol", "0")]
    assert main([*resumed, "--resume", str(run)]) == 0
    final = torch.load(run / "encoder.pt", weights_only=True)["state_dict"]
    for name, value in cut.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=0)
    trace = json.loads((run / "trace.json").read_text())
    assert [row["iteration"] for row in trace] == list(range(7))
    assert all(row["amortisation_gap"] >= 0 for row in trace)


def test_compare_writes_the_gap_column_and_each_encoder(tmp_path, capsys):
    argv = [
        "compare",
        "--model",
        "restricted-gmm",
        "--guides",
        "delta,amortised",
        "--k",
        "3",
        "--data",
        "builtin:blobs",
        "--out",
        str(tmp_path / "cmp"),
        "--quiet",
        "--max-iter",
        "4",
        "--encoder-steps",
        "10",
    ]
    assert main(argv) == 0
    lines = (tmp_path / "cmp" / "trace.csv").read_text().splitlines()
    assert lines[0].split(",")[-1] == "amortisation_gap"
    delta_gaps = [line.split(",")[-1] for line in lines[1:] if line.startswith("delta,")]
    assert delta_gaps and all(math.isnan(float(value)) for value in delta_gaps)
    assert (tmp_path / "cmp" / "guides" / "amortised" / "encoder.pt").is_file()
    assert not (tmp_path / "cmp" / "guides" / "delta" / "encoder.pt").exists()
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    finals = json.loads((tmp_path / "cmp" / "summary.json").read_text())["guides"]
    assert finals["amortised"]["amortisation_gap"] >= 0.0
    assert "amortisation_gap" not in finals["delta"]
