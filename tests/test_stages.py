"""The stages' records and the closed loop's one ``Aim`` controller, without running a search:
records round-trip through JSON; the Aim steers synthetic measurements as the pipeline's rounds
and final attempts do."""

from __future__ import annotations

import json

import pytest

from nas2deploy.architecture import Architecture
from nas2deploy.method import SearchContext
from nas2deploy.records import Attempt, Budget, Candidate, Verdict
from nas2deploy.stages.size import Aim

SPEC = {"input": {"channels": 1, "size": [8, 8]}, "num_classes": 10,
        "nodes": [{"id": "stem", "op": "conv", "inputs": ["input"], "c_in": 1, "c_out": 8},
                  {"id": "head", "op": "head", "inputs": ["stem"], "c_in": 8, "num_classes": 10}],
        "output": "head"}


def _arch() -> Architecture:
    return Architecture(method="random", network=SPEC, decisions={"note": "n"},
                        width_multiplier=0.75, seed=3, metadata={"predicted_ms": 1.0})


def _roundtrip(rec):
    return type(rec).from_dict(json.loads(json.dumps(rec.to_dict())))


def test_budget_round_trips():
    b = Budget(1.5, "0.5 x largest subnet's measured p50 (3.0000 ms)", 3.0, 0.4, "measured p50",
               0.25)
    assert _roundtrip(b) == b


def test_verdict_round_trips_and_rejects_unknown_fields():
    v = Verdict({"p50_ms": 1.2, "p90_ms": 1.3}, 1.5, True, 0.8, 1.1)
    assert _roundtrip(v) == v
    assert v.p50_ms == 1.2
    with pytest.raises(ValueError, match="unknown"):
        Verdict.from_dict({**v.to_dict(), "extra": 1})


def test_candidate_and_attempt_round_trip():
    arch = _arch()
    c = Candidate(0.75, arch, resized=1, prune_level=2, predicted_ms=1.0, measured_p50_ms=1.1)
    back = _roundtrip(c)
    assert back.width == 0.75 and back.resized == 1 and back.prune_level == 2
    assert back.architecture.network == arch.network
    a = Attempt(2, 0.75, arch, "/tmp/x/.attempt-2", {"parity": {}}, 1,
                Verdict({"p50_ms": 1.2}, 1.5, True, 0.8, 1.1))
    back = _roundtrip(a)
    assert back.verdict == a.verdict and back.within is True and back.ratio == 0.8
    assert back.architecture.to_dict() == arch.to_dict()
    assert _roundtrip(Attempt(1, 1.0, arch, "f")).verdict is None


class Linear:
    """An estimate of ``scale`` ms per unit of ``spec["w"]``."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def predict(self, spec):
        return self.scale * spec["w"]


def test_aim_constants_are_the_ones_the_search_context_carries():
    assert Aim.AIM == SearchContext.__dataclass_fields__["aim"].default
    assert Aim.RESIZE_BAND == SearchContext.__dataclass_fields__["resize_band"].default
    aim = Aim(10.0, Linear(), min_width=0.25)
    assert aim.aim_ms == pytest.approx(9.5)


def test_aim_recalibrates_by_measured_over_predicted():
    aim = Aim(10.0, Linear(), min_width=0.25)
    assert aim.predict({"w": 4.0}) == 4.0
    aim.recalibrate(6.0, 4.0)
    assert aim.correction == pytest.approx(1.5)
    assert aim.predict({"w": 4.0}) == pytest.approx(6.0)
    aim.recalibrate(1.0, 0.0)  # nothing predicted: nothing learnt
    assert aim.correction == pytest.approx(1.5)


def test_aim_resize_band_and_factor():
    aim = Aim(10.0, Linear(), min_width=0.25)
    assert not aim.wants_resize(1.0, 9.5 * 1.02)
    assert aim.wants_resize(1.0, 9.5 * 1.05)
    assert not aim.wants_resize(0.9, 9.5 * 1.5)  # only at full width
    # one re-sized net: by the measured ratio
    assert aim.resize_factor(8.0, 12.0) == pytest.approx(9.5 / 12.0)
    # two bracketing the aim: the secant through (estimate, measured)
    f = aim.resize_factor(6.0, 8.0)
    want = 6.0 + (9.5 - 8.0) * (8.0 - 6.0) / (12.0 - 8.0)
    assert f == pytest.approx(want / 6.0)


def test_over_budget_at_the_narrowest_width_shrink_asks_the_resize_lever():
    """``shrink``: the method's lever asked for the aim over the full-width net's corrected
    estimate (the correction learnt at the narrowest width, where overhead dominates)."""
    from nas2deploy.method import Decision
    from nas2deploy.stages.size import shrink

    class Base:
        def spec(self):
            return {"w": 20.0}

    asked = []

    def lever(factor):
        asked.append(factor)
        return Decision(Architecture(method="m", network={**SPEC, "num_classes": 9}))

    aim = Aim(10.0, Linear(), min_width=0.25)
    aim.recalibrate(12.0, 6.0)  # the narrowest width measured twice its estimate
    d = Decision(_arch(), resize=lever)
    new = shrink(aim, d, Base())
    assert new is not None and new.arch.network["num_classes"] == 9
    assert asked == [pytest.approx(9.5 / 40.0)]
    assert shrink(aim, Decision(_arch()), Base()) is None  # no lever
    same = Decision(_arch(), resize=lambda f: Decision(_arch()))
    assert shrink(aim, same, Base()) is None  # the lever would change nothing


def test_a_re_size_that_moved_the_measurement_away_from_the_aim_is_the_wrong_way():
    from nas2deploy.stages.size import wrong_way

    assert wrong_way(12.0, 13.0, 9.5)  # over the aim, asked faster, got slower
    assert not wrong_way(12.0, 8.0, 9.5)  # overshot, but the way asked: the secant's to fix
    assert wrong_way(8.0, 7.0, 9.5)  # under the aim, asked slower, got faster
    assert not wrong_way(8.0, 9.0, 9.5)
    assert not wrong_way(12.0, 12.2, 9.5) and not wrong_way(8.0, 7.9, 9.5)  # within the noise


def test_rounds_shrink_then_follow_the_secant():
    aim = Aim(10.0, Linear(), min_width=0.25)
    aim.bisect = lambda net: 0.9  # the estimate's width
    # over budget at 1.0, no secant yet: at least 5% narrower
    nxt, between = aim.propose_round(None, 1.0, 12.0)
    assert between is None and nxt == 0.9
    assert aim.next_round_width(1.0, nxt, between, False, False, None) == 0.9
    nxt, between = aim.propose_round(None, 0.9, 12.0)
    assert aim.next_round_width(0.9, nxt, between, False, False, None) == round(0.9 * 0.95, 4)
    # under the low-water mark at 0.8: the secant through 0.8 and the nearest over the aim
    # (the first of the two at 12 ms: 1.0) decides
    nxt, between = aim.propose_round(None, 0.8, 8.0)
    assert between == pytest.approx(0.8 + (9.5 - 8.0) * 0.2 / 4.0)
    assert aim.round_is_low(8.0) and not aim.round_is_low(9.2)
    assert aim.next_round_width(0.8, nxt, between, True, True, 0.8) == round(between, 4)
    # in the window: stop
    assert aim.next_round_width(0.8, nxt, between, True, False, 0.8) is None
    # over budget, and the next width would not beat the best under it: stop
    assert aim.next_round_width(0.9, 0.8, 0.8, False, False, 0.8) is None


def test_final_attempts_grow_and_shrink_by_at_least_three_percent():
    aim = Aim(10.0, Linear(), min_width=0.25)
    aim.bisect = lambda net: 0.5
    # under the low-water mark: grow by at least 3%, towards the estimate's width if it is wider
    assert aim.next_attempt_width(None, 0.5, 7.0, 7.0, True, 0.5, True, True) == round(0.5 * 1.03, 4)
    aim.forget()
    aim.bisect = lambda net: 0.7
    assert aim.next_attempt_width(None, 0.5, 7.0, 7.0, True, 0.5, True, True) == 0.7
    # over the budget: shrink by at least 3%, never to where an attempt under the budget was
    aim.forget()
    aim.bisect = lambda net: 0.9
    assert aim.next_attempt_width(None, 0.8, 11.0, 11.0, False, 0.8, True, False) == round(
        0.8 * 0.97, 4)
    aim.forget()
    assert aim.next_attempt_width(None, 0.8, 11.0, 11.0, False, 0.78, False, True) is None
    # grow, but not to a width measured over the budget
    aim.forget()
    aim.points.append((0.6, 11.0))
    nxt = aim.next_attempt_width(None, 0.5, 7.0, 7.0, True, 0.5, True, True)
    assert nxt == pytest.approx(0.5 + (9.5 - 7.0) * 0.1 / 4.0, abs=1e-4) and nxt < 0.6
    assert aim.attempt_is_low(0.85) and not aim.attempt_is_low(0.93)


def test_tfnas_aims_where_the_context_says_unless_its_options_say_otherwise():
    from nas2deploy_plugins.tfnas.config import TFNASConfig
    from nas2deploy_plugins.tfnas.search import aim_of

    class Ctx:
        aim, resize_band = 0.9, 0.02

    assert aim_of(TFNASConfig.from_dict({}), SearchContext(data=None, epochs=1, seed=0)) == (
        Aim.AIM, Aim.RESIZE_BAND)
    assert aim_of(TFNASConfig.from_dict({}), Ctx()) == (0.9, 0.02)
    assert aim_of(TFNASConfig.from_dict({"target_fraction": 0.8, "landing_tolerance": 0.05}),
                  Ctx()) == (0.8, 0.05)
