"""The operating-point study (tests/bench/oppoint_rules.py): its table's counts per rule, the 600-query
variants apart, the saving per pool; and the fallback judged as what route would serve."""

import numpy as np

from tests.bench.oppoint_rules import one, table


def _rule(rule, change, saving, held):
    return {"rule": rule, "test_change_points": change, "test_saving_pct": saving, "kept": change >= -0.5,
            "interval_held": held}


def test_the_table_counts_each_rule_over_every_run_and_the_small_variant_apart():
    rows = [{"pool": pool, "variant": v, "rules": [_rule("old", ch, 20.0, True), _rule("new", 0.0, s, held)]}
            for pool, v, ch, s, held in (("rb", "base", -0.2, 10.0, True), ("rb", "n600", -4.0, 30.0, False),
                                         ("lr", "n600", -1.0, 5.0, True))]
    lines = table(rows).splitlines()
    assert lines[2] == "| old | all | 3 | 1 | 3 | 20.0% | 20.0%, 20.0%, - | -1.00, -4.00 |"
    assert lines[3] == "| old | n600 | 2 | 0 | 2 | 20.0% | 20.0%, 20.0%, - | -2.50, -4.00 |"
    assert lines[4] == "| new | all | 3 | 3 | 2 | 10.0% | 20.0%, 5.0%, - | +0.00, +0.00 |"
    assert lines[5] == "| new | n600 | 2 | 2 | 1 | 17.5% | 30.0%, 5.0%, - | +0.00, +0.00 |"


def test_with_the_fallback_a_run_whose_tau_0_may_break_the_promise_is_judged_as_the_best_single():
    """The router's tau 0 loses on test; its bound at tau 0 already fails on the held-out rows, so
    with the fallback the best single serves: nothing saved, nothing lost."""
    n = 400
    s = np.c_[np.arange(n) % 2, np.ones(n)].astype(float)  # the cheap target right on half the rows
    p = np.tile([0.95, 0.9], (n, 1))  # the router prefers it everywhere
    c = np.tile([1.0, 10.0], (n, 1))
    rec = {"best": np.array(1), "p_va": p, "s_va": s, "c_va": c, "p_te": p, "s_te": s, "c_te": c}
    bare, safe = one(rec, "measured", "val", 1.645, None, False), one(rec, "measured", "val", 1.645, None, True)
    assert bare["fallback"] == "best single" and not bare["kept"] and bare["test_change_points"] == -50.0
    assert safe["kept"] and safe["test_change_points"] == 0.0 and safe["test_saving_pct"] == 0.0
