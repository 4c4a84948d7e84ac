import math

import pytest

from halluc_bench.report.full_summary import SUMMARY_FIELDS, seed_summary, summary_markdown


def make_row(model, seed, rank, chair_i, collapsed=False, **fields):
    row = {"model": model, "seed": seed, "rank": rank, "collapsed": collapsed, "chair_i": chair_i}
    row.update(fields)
    return row


def test_summary_mean_and_sd():
    rows = [make_row("ga", 0, 1, 0.10), make_row("ga", 1, 2, 0.20), make_row("ga", 2, 1, 0.30)]
    (entry,) = seed_summary(rows)
    assert entry["chair_i_mean"] == pytest.approx(0.20)
    assert entry["chair_i_sd"] == pytest.approx(0.10)
    assert entry["chair_i_n"] == 3
    assert entry["mean_rank"] == pytest.approx(4 / 3)


def test_summary_skips_non_finite():
    rows = [make_row("ga", 0, 1, 0.1, relearn_auc=math.inf), make_row("ga", 1, 1, 0.1, relearn_auc=0.4),
            make_row("ga", 2, 1, 0.1, relearn_auc=None)]
    (entry,) = seed_summary(rows)
    assert entry["relearn_auc_mean"] == pytest.approx(0.4)
    assert entry["relearn_auc_n"] == 1
    assert math.isnan(entry["relearn_auc_sd"])


def test_summary_order_base_then_rank():
    rows = [
        make_row("base", 0, None, 0.3, collapsed=None), make_row("npo", 0, 2, 0.2), make_row("sare", 0, 1, 0.1),
        make_row("ga", 0, None, 0.5, collapsed=True),
    ]
    assert [entry["model"] for entry in seed_summary(rows)] == ["base", "sare", "npo", "ga"]


def test_summary_counts_collapse():
    rows = [make_row("ga", 0, None, 0.5, collapsed=True), make_row("ga", 1, 1, 0.1)]
    (entry,) = seed_summary(rows)
    assert entry["collapsed"] == 1
    assert entry["repeats"] == 2
    assert entry["mean_rank"] == 1


def test_summary_markdown_cells():
    rows = [make_row("ga", 0, 1, 0.10), make_row("ga", 1, 1, 0.20)]
    table = summary_markdown(seed_summary(rows))
    assert "0.15 ± 0.071" in table
    assert "0 of 2" in table
    for header in SUMMARY_FIELDS.values():
        assert header in table


def test_mean_curve_shared_points():
    from halluc_bench.report.full_figures import _mean_curve

    x, mean, spread = _mean_curve([[(0, 1.0), (5, 2.0), (10, 9.0)], [(0, 3.0), (5, 4.0)]])
    assert x == [0, 5]
    assert mean == pytest.approx([2.0, 3.0])
    assert spread == pytest.approx([math.sqrt(2), math.sqrt(2)])


def test_mean_curve_single_and_empty():
    from halluc_bench.report.full_figures import _mean_curve

    assert _mean_curve([[(1, 0.5)]]) == ([1], [0.5], [0.0])
    assert _mean_curve([]) == ([], [], [])


def test_specificity_note_names_methods():
    from halluc_bench.report.full import _specificity_note

    rows = [make_row("ga", 0, 1, 0.1, resurgence=1.0, benign_relearn_resurgence=2.0),
            make_row("sare", 0, 2, 0.1, resurgence=1.5, benign_relearn_resurgence=0.5)]
    note = _specificity_note(seed_summary(rows))
    assert "for ga:" in note
    assert "sare" not in note


def test_specificity_note_all_specific():
    from halluc_bench.report.full import _specificity_note

    rows = [make_row("ga", 0, 1, 0.1, resurgence=1.0, benign_relearn_resurgence=0.2)]
    assert _specificity_note(seed_summary(rows)).startswith("For every method")


def test_specificity_note_undefined():
    from halluc_bench.report.full import _specificity_note

    rows = [make_row("ga", 0, 1, 0.1, resurgence=math.nan, benign_relearn_resurgence=0.2)]
    assert "could not be compared" in _specificity_note(seed_summary(rows))


def test_rho_by_seed_within_seed():
    from halluc_bench.report.correlation import rho_by_seed

    points = []
    for seed, offset in ((0, 0.0), (1, 100.0)):
        for rank in range(4):
            points.append((seed, offset + rank, (offset + rank) * (1 if seed == 0 else -1)))
    rhos = rho_by_seed([0, 1], points)
    assert rhos[0] == pytest.approx(1.0)
    assert rhos[1] == pytest.approx(-1.0)


def test_rho_by_seed_undefined():
    from halluc_bench.report.correlation import rho_by_seed

    assert rho_by_seed([0, 1], [(0, 1.0, 2.0)]) == {0: None, 1: None}
