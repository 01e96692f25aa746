"""The operating-point study's table (tests/bench/oppoint_study.py): counts per rule, the 600-query variants
apart, and each measured rule under train.fallback_best_single."""

from tests.bench.oppoint_study import rule_name, table


def _rule(rule, z, rows, change, saving, held, fallback=None):
    return {"rule": rule, "guard_z": z, "rows": rows, "test_change_points": change, "test_saving_pct": saving,
            "kept": change >= -0.5, "interval_held": held, "fallback": fallback}


def test_the_table_counts_each_rule_over_every_run_and_the_small_variant_apart():
    oof = {"out_of_fold": 500, "validation": 80}
    rows = [{"variant": v, "rules": [_rule("expected", 1.645, {"validation": 80}, ch, 20.0, True),
                                     _rule("measured", None, oof, ch, s, held, fb)]}
            for v, ch, s, held, fb in (("base", -0.2, 10.0, True, None), ("n600", -4.0, 30.0, False, "best single"),
                                       ("n600", -1.0, 5.0, True, "tau 0"))]
    assert rule_name(rows[0]["rules"][1]) == "measured on oof+val, point"
    lines = table(rows).splitlines()
    assert lines[2] == "| expected on val, z 1.645 | 3 | all | 1 | 3 | 20.0% | -1.00, -4.00 |"
    assert lines[3] == "| expected on val, z 1.645 | 2 | n600 | 0 | 2 | 20.0% | -2.50, -4.00 |"
    assert lines[4] == "| measured on oof+val, point | 3 | all | 1 | 2 | 10.0% | -1.00, -4.00 |"
    assert lines[5] == "| measured on oof+val, point | 2 | n600 | 0 | 1 | 17.5% | -2.50, -4.00 |"
    # With train.fallback_best_single the run whose tau 0 may break the promise serves the best single:
    # nothing saved, nothing lost; the run that fell back to tau 0 is unchanged.
    assert lines[6] == "| measured +fallback on oof+val, point | 3 | all | 2 | 3 | 5.0% | -0.20, -1.00 |"
    assert lines[7] == "| measured +fallback on oof+val, point | 2 | n600 | 1 | 2 | 2.5% | -0.50, -1.00 |"
