"""The operating-point study's table (tests/bench/oppoint_study.py): counts per rule, the 600-query variants apart."""

from tests.bench.oppoint_study import rule_name, table


def _rule(rule, z, rows, change, saving, held):
    return {"rule": rule, "guard_z": z, "rows": rows, "test_change_points": change, "test_saving_pct": saving,
            "kept": change >= -0.5, "interval_held": held}


def test_the_table_counts_each_rule_over_every_run_and_the_small_variant_apart():
    oof = {"out_of_fold": 500, "validation": 80}
    rows = [{"variant": v, "rules": [_rule("expected", 1.645, {"validation": 80}, ch, 20.0, True),
                                     _rule("measured", None, oof, 0.1, s, held)]}
            for v, ch, s, held in (("base", -0.2, 10.0, True), ("n600", -4.0, 30.0, False), ("n600", -1.0, 5.0, True))]
    assert rule_name(rows[0]["rules"][1]) == "measured on oof+val, point"
    lines = table(rows).splitlines()
    assert lines[2] == "| expected on val, z 1.645 | 3 | all | 1 | 3 | 20.0% | -1.00, -4.00 |"
    assert lines[3] == "| expected on val, z 1.645 | 2 | n600 | 0 | 2 | 20.0% | -2.50, -4.00 |"
    assert lines[4] == "| measured on oof+val, point | 3 | all | 3 | 2 | 10.0% | +0.10, +0.10 |"
    assert lines[5] == "| measured on oof+val, point | 2 | n600 | 2 | 1 | 17.5% | +0.10, +0.10 |"
