"""The transcribed paper tables are self-consistent: every H is HM(B, N) and every average row is
the HM of the column means (the checks the specs ran on the published tables)."""
import pytest

from scripts.paper_numbers import DATASET_ORDER, PAPER
from scripts.methods import PAPER_DATASETS


def hm(base, new):
    return 2 * base * new / (base + new)


@pytest.mark.parametrize("method", [m for m, e in PAPER.items() if len(e["results"]) > 1])
def test_rows_are_harmonic_means_and_averages_match(method):
    results = PAPER[method]["results"]
    assert set(results) == set(DATASET_ORDER) and set(DATASET_ORDER[1:]) == set(PAPER_DATASETS)
    for dataset, (base, new, h) in results.items():
        if dataset in PAPER[method].get("misprinted_h", ()):
            assert hm(base, new) != pytest.approx(h, abs=0.011), f"{dataset} is listed as misprinted"
            continue
        assert hm(base, new) == pytest.approx(h, abs=0.011), dataset
    rows = [results[d] for d in DATASET_ORDER[1:]]
    avg_base, avg_new = (sum(r[i] for r in rows) / len(rows) for i in (0, 1))
    assert (avg_base, avg_new) == pytest.approx(results["average"][:2], abs=0.006)
    assert hm(avg_base, avg_new) == pytest.approx(results["average"][2], abs=0.011)


def test_methods_in_the_paper_table_are_known_methods():
    from scripts.methods import METHODS

    assert set(PAPER) <= set(METHODS)
