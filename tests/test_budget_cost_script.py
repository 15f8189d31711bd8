"""``benchmarks/budget_cost.py``: the budget runs of the claims set, built as ``eqprop train``
builds them, timed against backprop; and the choice of the cheapest budget that keeps the exact
budget's accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def budget_cost(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import budget_cost

    return budget_cost


def test_budget_runs_are_the_claims_budget_group_exact_first(budget_cost):
    names = [e.name for e in budget_cost.budget_runs()]
    assert names[0] == budget_cost.EXACT
    assert set(names) == {"budget-t60-15-sync", "cifar-ce-symmetric", "budget-t6-2", "budget-t4-1",
                          "budget-fb-t4-1", "budget-fb-t6-1", "budget-fb-t4-2", "budget-fb-t1-1",
                          "budget-fb-t3-1", "budget-fb-t5-1"}  # fmt: skip


def test_node_sweep_budgets_are_the_even_odd_ones_with_forward_backward_sweeps(budget_cost):
    runs = {e.name: e for e in budget_cost.budget_runs()}
    for fb, eo in (("budget-fb-t4-1", "budget-t4-1"),):
        assert set(runs[fb].overrides) - set(runs[eo].overrides) == {
            "dynamics.schedule=forward_backward"
        }


def test_measure_times_the_runs_own_recipe_against_backprop(budget_cost):
    exp = next(e for e in budget_cost.budget_runs() if e.name == "budget-t4-1")
    row = budget_cost.measure(exp, reps=1, batch=2)
    assert (row["schedule"], row["free_steps"], row["nudged_steps"]) == ("even_odd", 4, 1)
    assert row["steps_per_example"] == 4 + 2 * 1 and row["batch"] == 2
    assert row["bp"]["layout"] in budget_cost.LAYOUTS
    assert row["ep_over_bp"] == pytest.approx(row["ep"]["wall_s"] / row["bp"]["wall_s"])
    assert row["ep"]["wall_s"] > 0 and row["ep_over_bp_cpu"] > 0


def _rows(*walls: float) -> list[dict]:
    names = ["budget-t60-15-sync", "cifar-ce-symmetric", "budget-t6-2", "budget-t4-1"]
    return [{"name": n, "ep": {"wall_s": w}} for n, w in zip(names, walls, strict=True)]


def _claims(tmp_path: Path, errors: dict[str, float | None]) -> Path:
    path = tmp_path / "claims.json"
    runs = [{"name": n, "test_error": e} for n, e in errors.items()]
    path.write_text(json.dumps({"runs": runs}))
    return path


def test_cheapest_budget_within_half_a_point_of_the_exact_one(budget_cost, tmp_path):
    errors = {"budget-t60-15-sync": 0.400, "cifar-ce-symmetric": 0.404,
              "budget-t6-2": 0.406, "budget-t4-1": 0.79}  # fmt: skip
    rows = _rows(9.0, 2.0, 1.0, 0.6)
    assert budget_cost.join_results(rows, _claims(tmp_path, errors)) == "cifar-ce-symmetric"
    assert [r["test_error"] for r in rows] == list(errors.values())


def test_no_choice_without_the_exact_result(budget_cost, tmp_path):
    errors = {"budget-t60-15-sync": None, "cifar-ce-symmetric": 0.41}
    rows = _rows(9.0, 2.0, 1.0, 0.6)
    assert budget_cost.join_results(rows, _claims(tmp_path, errors)) is None
    assert budget_cost.join_results(rows, tmp_path / "missing.json") is None


def test_rejoin_reuses_the_measurements_and_times_nothing(
    budget_cost, tmp_path, capsys, monkeypatch
):
    earlier = tmp_path / "budget_cost.json"
    earlier.write_text(json.dumps({"threads": 1, "cheapest_within_half_point": None,
                                   "results": _rows(9.0, 2.0, 1.0, 0.6)}))  # fmt: skip
    errors = {"budget-t60-15-sync": 0.400, "cifar-ce-symmetric": 0.41,
              "budget-t6-2": 0.402, "budget-t4-1": 0.79}  # fmt: skip
    monkeypatch.setattr(budget_cost, "measure", lambda *a: pytest.fail("timed a run"))
    budget_cost.main(["--rejoin", str(earlier), "--claims", str(_claims(tmp_path, errors))])
    out = json.loads(capsys.readouterr().out)
    assert out["cheapest_within_half_point"] == "budget-t6-2" and out["threads"] == 1
    assert [r["test_error"] for r in out["results"]] == list(errors.values())


def test_rejoin_joins_several_outputs_a_later_row_replacing_an_earlier_one(
    budget_cost, tmp_path, capsys, monkeypatch
):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"threads": 1, "results": _rows(9.0, 2.0, 1.0, 0.6)}))
    later = [{"name": "budget-t4-1", "ep": {"wall_s": 0.5}},
             {"name": "budget-fb-t4-1", "ep": {"wall_s": 0.55}}]  # fmt: skip
    second.write_text(json.dumps({"threads": 1, "results": later}))
    errors = {"budget-t60-15-sync": 0.400, "cifar-ce-symmetric": 0.41, "budget-t6-2": 0.41,
              "budget-t4-1": 0.79, "budget-fb-t4-1": 0.403}  # fmt: skip
    monkeypatch.setattr(budget_cost, "measure", lambda *a: pytest.fail("timed a run"))
    claims = str(_claims(tmp_path, errors))
    budget_cost.main(["--rejoin", str(first), "--rejoin", str(second), "--claims", claims])
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out["results"]] == list(errors)
    assert out["results"][3]["ep"]["wall_s"] == 0.5
    assert out["cheapest_within_half_point"] == "budget-fb-t4-1"


def test_only_times_the_named_runs_and_names_the_group_when_one_is_not_in_it(
    budget_cost, capsys, monkeypatch
):
    timed = []

    def measure(exp, *args):
        timed.append(exp.name)
        return {"name": exp.name, "ep": {"wall_s": 1.0}}

    monkeypatch.setattr(budget_cost, "measure", measure)
    budget_cost.main(["--only", "budget-t4-1,budget-fb-t4-1", "--claims", "/nonexistent"])
    assert timed == ["budget-t4-1", "budget-fb-t4-1"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        budget_cost.main(["--only", "budget-t5-1"])
    err = capsys.readouterr().err
    assert "budget-t5-1 not in the budget group" in err and "budget-t60-15-sync" in err
