"""Product and fitted fusion of base probabilities with qualitative likelihood ratios."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusion_helpers import quant_records, race_records
from racequant.calibration.lifecycle import NotFittedError
from racequant.fusion.api import fuse_files
from racequant.fusion.errors import FusionMismatchError, FusionParameterError
from racequant.fusion.fusion import FittedFusion, fuse_records, market_probabilities, product_fusion
from racequant.fusion.schema import LR_FIELDS, validate_qualitative
from racequant.models.place import n_places

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _qual(race_id: str, lrs: dict[str, float]):  # type: ignore[no-untyped-def]
    return validate_qualitative(race_records(race_id, lrs))


def test_hand_computed_product_fusion() -> None:
    # base 0.5, 0.3, 0.2 with ratios 2, 1, 0.5: unnormalised 1.0, 0.3, 0.1; total 1.4
    quant = quant_records("R1", {"A": 0.5, "B": 0.3, "C": 0.2})
    out = fuse_records(quant, _qual("R1", {"A": 2.0, "B": 1.0, "C": 0.5}))
    assert [r["win_prob_final"] for r in out] == pytest.approx([1.0 / 1.4, 0.3 / 1.4, 0.1 / 1.4], abs=1e-12)
    # bounds through the same transformation: 0.8 * 0.5 * 2 / 1.4 and 1.2 * 0.5 * 2 / 1.4
    assert out[0]["win_prob_final_lower"] == pytest.approx(0.8 / 1.4, abs=1e-12)
    assert out[0]["win_prob_final_upper"] == pytest.approx(1.2 / 1.4, abs=1e-12)
    assert out[2]["win_prob_final_lower"] == pytest.approx(0.08 / 1.4, abs=1e-12)
    assert [r["lr_product"] for r in out] == [2.0, 1.0, 0.5]
    assert out[0]["lr_form_fitness"] == 2.0 and out[0]["lr_context"] == 1.0
    # the quantitative record is carried over unchanged
    assert out[1]["win_prob_base"] == 0.3 and out[1]["model_version"] == "test"
    assert json.loads(json.dumps(out)) == out


def test_final_probabilities_sum_to_one_in_every_race_and_places_to_the_places_paid() -> None:
    rng = np.random.default_rng(0)
    quant, qual = [], []
    for r, n in enumerate([3, 5, 8, 14]):
        p = rng.dirichlet(np.ones(n))
        horses = [f"H{i}" for i in range(n)]
        quant += quant_records(f"R{r}", dict(zip(horses, p, strict=True)))
        qual += _qual(f"R{r}", dict(zip(horses, np.round(rng.uniform(0.2, 5, n), 3), strict=True)))
    out = pd.DataFrame(fuse_records(quant, qual))
    sums = out.groupby("race_id")["win_prob_final"].sum()
    assert np.abs(sums - 1).max() < 1e-12
    place = out.groupby("race_id")["place_prob_final"].agg(["sum", "size"])
    assert place["sum"].to_numpy() == pytest.approx(np.minimum(n_places(place["size"].to_numpy()), place["size"]))
    assert (out["win_prob_final_lower"] <= out["win_prob_final"]).all()
    assert (out["win_prob_final_upper"] >= out["win_prob_final"]).all()
    assert (out["place_prob_final"] >= out["win_prob_final"] - 1e-12).all()


def test_all_ratios_one_leave_every_probability_unchanged() -> None:
    probs = {f"H{i}": p for i, p in enumerate([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.07])}
    quant = quant_records("R1", probs, place_prob_base=None)
    for rec, place in zip(quant, [0.7, 0.55, 0.45, 0.35, 0.35, 0.3, 0.3], strict=True):
        rec["place_prob_base"] = place
    out = fuse_records(quant, _qual("R1", dict.fromkeys(probs, 1.0)))
    assert [r["win_prob_final"] for r in out] == pytest.approx(list(probs.values()), abs=1e-12)
    assert [r["place_prob_final"] for r in out] == pytest.approx([0.7, 0.55, 0.45, 0.35, 0.35, 0.3, 0.3], abs=1e-9)
    assert [r["win_prob_final_lower"] for r in out] == pytest.approx([0.8 * p for p in probs.values()], abs=1e-12)


def test_a_stronger_ratio_raises_the_place_probability_too() -> None:
    probs = {f"H{i}": 1 / 8 for i in range(8)}
    quant = quant_records("R1", probs)
    for rec in quant:
        rec["place_prob_base"] = 3 / 8
    out = fuse_records(quant, _qual("R1", {**dict.fromkeys(probs, 1.0), "H0": 3.0}))
    assert out[0]["place_prob_final"] > 3 / 8 > out[1]["place_prob_final"]


def test_a_horse_missing_from_the_qualitative_records_is_named() -> None:
    quant = quant_records("R1", {"A": 0.5, "B": 0.3, "C": 0.2})
    with pytest.raises(
        FusionMismatchError, match=re.escape("race R1, horse C (Horse C): missing from the qualitative")
    ):
        fuse_records(quant, _qual("R1", {"A": 2.0, "B": 1.0}))


def test_an_extra_horse_in_the_qualitative_records_is_named() -> None:
    quant = quant_records("R1", {"A": 0.6, "B": 0.4})
    with pytest.raises(FusionMismatchError, match=re.escape("race R1, horse Z (Horse Z): extra in the qualitative")):
        fuse_records(quant, _qual("R1", {"A": 2.0, "B": 1.0, "Z": 1.0}))


def test_qualitative_records_of_another_race_do_not_match() -> None:
    quant = quant_records("R1", {"A": 0.6, "B": 0.4})
    with pytest.raises(FusionMismatchError) as info:
        fuse_records(quant, _qual("R2", {"A": 2.0, "B": 1.0}))
    message = str(info.value)
    assert "race R1, horse A (Horse A): missing" in message and "race R2, horse A (Horse A): extra" in message


def test_required_quantitative_fields_are_checked() -> None:
    quant = quant_records("R1", {"A": 0.6, "B": 0.4})
    del quant[1]["win_prob_base"]
    with pytest.raises(FusionMismatchError, match=re.escape("(horse B (Horse B)): missing field(s) win_prob_base")):
        fuse_records(quant, _qual("R1", {"A": 2.0, "B": 1.0}))
    quant = quant_records("R1", {"A": 0.6, "B": 1.4})
    with pytest.raises(FusionMismatchError, match=re.escape("win_prob_base must be in (0, 1], got 1.4")):
        fuse_records(quant, _qual("R1", {"A": 2.0, "B": 1.0}))


def test_unknown_mode_and_fitted_without_pool_are_refused() -> None:
    quant = quant_records("R1", {"A": 0.6, "B": 0.4})
    qual = _qual("R1", {"A": 2.0, "B": 1.0})
    with pytest.raises(FusionParameterError, match=re.escape("must be one of ('product', 'fitted'). Got 'sum'")):
        fuse_records(quant, qual, mode="sum")
    with pytest.raises(FusionParameterError, match="fitted FittedFusion"):
        fuse_records(quant, qual, mode="fitted")


def test_product_fusion_on_arrays_matches_the_records() -> None:
    p = product_fusion(np.array([0.5, 0.3, 0.2, 0.6, 0.4]), np.array([2, 1, 0.5, 1, 1]), np.array([1, 1, 1, 2, 2]))
    assert p == pytest.approx([1 / 1.4, 0.3 / 1.4, 0.1 / 1.4, 0.6, 0.4])


def test_market_probabilities_remove_the_overround() -> None:
    assert market_probabilities(np.array([2.0, 4.0, 4.0]), np.array([1, 1, 1])) == pytest.approx([0.5, 0.25, 0.25])


def _training_frame(n_races: int, seed: int) -> pd.DataFrame:
    """Races whose winners come from base^0.5 * market^0.5 * form^1, other ratios noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_races):
        n = 10
        base = rng.dirichlet(np.ones(n) * 2)
        market = rng.dirichlet(np.ones(n) * 2)
        lrs = {f: np.exp(rng.normal(0, 0.4, n)) for f in LR_FIELDS}
        s = 0.5 * np.log(base) + 0.5 * np.log(market) + np.log(lrs["lr_form_fitness"])
        p = np.exp(s) / np.exp(s).sum()
        winner = rng.choice(n, p=p)
        for i in range(n):
            rows.append(
                {
                    "race_id": f"R{r}",
                    "horse_id": f"H{i}",
                    "won": int(i == winner),
                    "win_prob_base": base[i],
                    "market_prob": market[i],
                    **{f: lrs[f][i] for f in LR_FIELDS},
                }
            )
    return pd.DataFrame(rows)


def test_fitted_fusion_recovers_the_weights_and_beats_product_fusion_out_of_sample() -> None:
    train, test = _training_frame(3000, 1), _training_frame(1500, 2)
    fitted = FittedFusion().fit(train)
    w = fitted.weights_["with_qualitative"]
    assert w["win_prob_base"]["coef"] == pytest.approx(0.5, abs=0.15)
    assert w["lr_form_fitness"]["coef"] == pytest.approx(1.0, abs=0.2)
    assert abs(w["lr_context"]["coef"]) < 0.25
    p_fit = fitted.predict_proba(test)
    lr = test[list(LR_FIELDS)].prod(axis=1).to_numpy()
    p_prod = product_fusion(test["win_prob_base"].to_numpy(), lr, test["race_id"].to_numpy())
    won = test["won"].to_numpy() > 0
    assert -np.log(p_fit[won]).mean() < -np.log(p_prod[won]).mean()


def test_races_without_qualitative_history_use_the_second_stage() -> None:
    train = _training_frame(600, 3)
    train.loc[train["race_id"].isin([f"R{i}" for i in range(300)]), list(LR_FIELDS)] = np.nan
    fitted = FittedFusion().fit(train)
    assert fitted.weights_["second_stage_races"] == 600
    assert fitted.weights_["with_qualitative_races"] == 300
    test = _training_frame(5, 4)
    test[list(LR_FIELDS)] = np.nan
    second = fitted.second_stage_.predict_proba(
        np.log(test[["win_prob_base", "market_prob"]].to_numpy()), test["race_id"].to_numpy()
    )
    assert fitted.predict_proba(test) == pytest.approx(second, abs=1e-12)


def test_fitted_mode_in_fuse_records_uses_the_odds_and_saves_and_loads(tmp_path: Path) -> None:
    fitted = FittedFusion().fit(_training_frame(400, 5))
    fitted.save(tmp_path / "pool.joblib")
    loaded = FittedFusion.load(tmp_path / "pool.joblib")
    quant = quant_records("R1", {"A": 0.5, "B": 0.3, "C": 0.2})
    for rec, odds in zip(quant, [2.5, 3.0, 6.0], strict=True):
        rec["win_odds"] = odds
    out = fuse_records(quant, _qual("R1", {"A": 2.0, "B": 1.0, "C": 0.5}), mode="fitted", pool=loaded)
    assert sum(r["win_prob_final"] for r in out) == pytest.approx(1.0, abs=1e-12)
    assert out[0]["fusion_mode"] == "fitted"
    assert all(r["win_prob_final_lower"] <= r["win_prob_final"] <= r["win_prob_final_upper"] for r in out)
    del quant[2]["win_odds"]
    with pytest.raises(FusionMismatchError, match="race R1 horse C"):
        fuse_records(quant, _qual("R1", {"A": 2.0, "B": 1.0, "C": 0.5}), mode="fitted", pool=loaded)


def test_fitted_fusion_refuses_predict_before_fit() -> None:
    with pytest.raises(
        NotFittedError, match=re.escape("Incorrect method order: call fit before calling predict_proba.")
    ):
        FittedFusion().predict_proba(_training_frame(2, 0))


def test_fuse_files_on_the_examples() -> None:
    out = fuse_files(EXAMPLES / "quant_example.json", EXAMPLES / "qual_example.json")
    assert len(out) == 11
    assert sum(r["win_prob_final"] for r in out) == pytest.approx(1.0, abs=1e-12)
    assert sum(r["place_prob_final"] for r in out) == pytest.approx(3.0, abs=1e-9)


def test_the_demo_fuses_one_simulated_race() -> None:
    from racequant.fusion.api import demo_fuse_race
    from racequant.ingest.simulator import simulate

    result = demo_fuse_race(simulate(30, seed=3))
    fused = result["fused"]
    assert len(fused) >= 7 and {r["race_id"] for r in fused} == {result["race_id"]}
    assert sum(r["win_prob_final"] for r in fused) == pytest.approx(1.0, abs=1e-12)
    assert len(result["qualitative"]) == len(fused)
