import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from sklearn import metrics as sk_metrics

from keras_tac import metrics


@pytest.fixture(autouse=True)
def clear_session():
    """Pure NumPy tests: overrides the shared fixture, which resets the
    Keras session (slow on JAX) for nothing here."""
    yield


def random_case(seed, n=200, levels=None):
    """Scores correlated with the labels; `levels` rounds them to create
    ties."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.7
    scores = rng.normal(size=n) + 1.2 * labels
    if levels:
        scores = np.round(scores * levels) / levels
    return scores, labels


def brute_force_expected_errors(confidence, correct):
    """Reference: errors among the k most confident inputs, averaged over
    every order of the tied inputs (exhaustive, for tiny cases)."""
    values = sorted(set(confidence), reverse=True)
    groups = [
        [bool(c) for s, c in zip(confidence, correct) if s == v] for v in values
    ]
    totals = np.zeros(len(confidence) + 1)
    orders = [list(itertools.permutations(g)) for g in groups]
    count = 0
    for choice in itertools.product(*orders):
        ranked = [c for group in choice for c in group]
        totals += np.concatenate([[0], np.cumsum(~np.array(ranked))])
        count += 1
    return totals / count


def aurc_by_hand(confidence, correct):
    """AURC from its definition (Geifman et al., 2019), written apart from
    `keras_tac`: the mean over k = 1..n of the error rate among the k most
    confident inputs, a partly accepted tie group counting its error
    fraction per accepted input (the expectation over random orders of
    the tied inputs)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    wrong = ~np.asarray(correct, dtype=bool)
    ranked = np.sort(confidence)[::-1]
    risks = []
    for k in range(1, len(ranked) + 1):
        above = confidence > ranked[k - 1]
        tied = confidence == ranked[k - 1]
        taken = k - above.sum()
        errors = wrong[above].sum() + taken * wrong[tied].mean()
        risks.append(errors / k)
    return float(np.mean(risks))


def optimal_aurc(correct):
    """AURC of the oracle ranking (every correct input first): with `c`
    correct of `n`, the k most confident hold `max(0, k - c)` errors."""
    n, c = len(correct), int(np.sum(correct))
    return sum((k - c) / k for k in range(c + 1, n + 1)) / n


def detection_rate_by_hand(scores, labels):
    """`1 - EER` from scikit-learn's ROC curve: the TPR where the polyline
    through its points crosses the line `FPR = 1 - TPR`."""
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
    for i in range(1, len(fpr)):
        before = fpr[i - 1] + tpr[i - 1] - 1
        after = fpr[i] + tpr[i] - 1
        if before <= 0 <= after and after > before:
            weight = -before / (after - before)
            return tpr[i - 1] + weight * (tpr[i] - tpr[i - 1])
    raise AssertionError("the ROC curve never crosses FPR = 1 - TPR")


TIE_CASES = [
    ([3.0, 2.0, 2.0, 1.0], [1, 1, 0, 0]),
    ([1.0, 1.0, 1.0, 1.0, 1.0], [1, 0, 1, 1, 0]),
    ([5.0, 4.0, 4.0, 4.0, 1.0, 1.0], [0, 1, 0, 1, 1, 0]),
    ([0.2, 0.9, 0.9, 0.1, 0.5, 0.5, 0.5], [0, 1, 1, 0, 1, 0, 0]),
]


class TestRankingCurves:
    @pytest.mark.parametrize("levels", [None, 2, 1])
    def test_roc_matches_sklearn(self, levels):
        scores, labels = random_case(0, levels=levels)
        fpr, tpr, thresholds = metrics.roc_curve(scores, labels)
        sk_fpr, sk_tpr, sk_thr = sk_metrics.roc_curve(
            labels, scores, drop_intermediate=False
        )
        np.testing.assert_allclose(fpr, sk_fpr)
        np.testing.assert_allclose(tpr, sk_tpr)
        np.testing.assert_allclose(thresholds[1:], sk_thr[1:])
        assert thresholds[0] == np.inf
        assert metrics.roc_auc(scores, labels) == pytest.approx(
            sk_metrics.roc_auc_score(labels, scores), abs=1e-12
        )

    @pytest.mark.parametrize("levels", [None, 2, 1])
    def test_average_precision_matches_sklearn(self, levels):
        scores, labels = random_case(1, levels=levels)
        assert metrics.average_precision(scores, labels) == pytest.approx(
            sk_metrics.average_precision_score(labels, scores), abs=1e-12
        )
        assert metrics.average_precision(-scores, ~labels) == pytest.approx(
            sk_metrics.average_precision_score(~labels, -scores), abs=1e-12
        )

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=30
        ).filter(lambda pairs: len({label for _, label in pairs}) == 2)
    )
    def test_heavy_ties_match_sklearn(self, pairs):
        scores = np.array([s for s, _ in pairs], dtype=float)
        labels = np.array([label for _, label in pairs])
        assert metrics.roc_auc(scores, labels) == pytest.approx(
            sk_metrics.roc_auc_score(labels, scores), abs=1e-12
        )
        assert metrics.average_precision(scores, labels) == pytest.approx(
            sk_metrics.average_precision_score(labels, scores), abs=1e-12
        )

    def test_constant_score(self):
        scores = np.full(10, 0.3)
        labels = np.arange(10) < 7
        assert metrics.roc_auc(scores, labels) == 0.5
        assert metrics.average_precision(scores, labels) == pytest.approx(0.7)
        assert metrics.fpr_at_tpr(scores, labels) == 1.0
        assert metrics.detection_rate_at_eer(scores, labels) == 0.5

    def test_never_symmetrised(self):
        scores, labels = random_case(2)
        auc = metrics.roc_auc(-scores, labels)
        assert auc < 0.5
        assert auc == pytest.approx(
            sk_metrics.roc_auc_score(labels, -scores), abs=1e-12
        )

    @pytest.mark.parametrize("levels", [None, 1])
    @pytest.mark.parametrize("target", [0.95, 0.8, 1.0])
    def test_fpr_at_tpr_brute_force(self, levels, target):
        scores, labels = random_case(3, n=60, levels=levels)
        best = None
        for t in sorted(set(scores), reverse=True):
            accepted = scores >= t
            if accepted[labels].mean() >= target - 1e-12:
                best = accepted[~labels].mean()
                break
        assert metrics.fpr_at_tpr(scores, labels, target) == best

    def test_fpr_at_tpr_exact_fraction(self):
        # 19 of 20 positives is exactly 95%, despite floating point.
        scores = np.concatenate([np.arange(20, 0, -1), [19.5, 0.5]])
        labels = np.concatenate([np.ones(20, bool), [False, False]])
        assert metrics.fpr_at_tpr(scores, labels, 0.95) == 0.5

    def test_detection_rate_at_eer(self):
        assert metrics.detection_rate_at_eer([2, 1], [1, 0]) == 1.0
        assert metrics.detection_rate_at_eer([1, 2], [1, 0]) == 0.0
        # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1) meets FPR = 1 - TPR at
        # the vertex (.5,.5).
        assert metrics.detection_rate_at_eer([4, 3, 2, 1], [1, 0, 1, 0]) == 0.5
        # Ties: the segment (0,0)-(1/2,1) then (1/2,1)-(1,1); crossing where
        # tpr = 2 fpr and fpr = 1 - tpr: fpr = 1/3.
        rate = metrics.detection_rate_at_eer([2, 2, 2, 1], [1, 1, 0, 0])
        assert rate == pytest.approx(2 / 3)

    @pytest.mark.parametrize("seed,levels", [(12, None), (13, 2), (14, 1)])
    def test_detection_rate_at_eer_by_hand(self, seed, levels):
        scores, labels = random_case(seed, levels=levels)
        rate = metrics.detection_rate_at_eer(scores, labels)
        assert rate == pytest.approx(
            detection_rate_by_hand(scores, labels), abs=1e-12
        )
        assert 0.5 < rate < 1.0

    @pytest.mark.parametrize(
        "scores,labels,match",
        [
            ([1.0, float("nan")], [1, 0], "NaN"),
            ([1.0, 2.0], [1, 0, 1], "shape"),
            ([1.0, 2.0], [2, 0], "labels.*0/1"),
            ([1.0, 2.0], [3, 3], "labels.*0/1"),
            ([1.0, 2.0], [0.5, 1.0], "labels.*0/1"),
            ([1.0, 2.0], [1.0, float("nan")], "labels.*0/1"),
            ([1.0, 2.0], ["a", "b"], "labels.*0/1"),
            ([1.0, 2.0], [1, 1], "single class"),
            ([], [], "non-empty"),
            (np.ones((2, 2)), [1, 0], "1-D"),
        ],
    )
    def test_bad_input(self, scores, labels, match):
        with pytest.raises(ValueError, match=match):
            metrics.roc_auc(scores, labels)

    @pytest.mark.parametrize(
        "labels",
        [
            [True, False, True, False],
            [1, 0, 1, 0],
            np.array([1, 0, 1, 0], "uint8"),
            [1.0, 0.0, 1.0, 0.0],
            [[1], [0], [1], [0]],
        ],
    )
    def test_binary_labels_accepted(self, labels):
        assert metrics.roc_auc([4.0, 3.0, 2.0, 1.0], labels) == 0.75
        assert metrics.aurc([4.0, 3.0, 2.0, 1.0], labels) == pytest.approx(
            (0 + 1 / 2 + 1 / 3 + 2 / 4) / 4
        )

    def test_bad_tpr(self):
        with pytest.raises(ValueError, match="tpr"):
            metrics.fpr_at_tpr([1, 2], [1, 0], tpr=0.0)

    def test_infinite_scores_are_ranked(self):
        scores = [np.inf, np.inf, 1.0, -np.inf]
        labels = [1, 0, 1, 0]
        assert metrics.roc_auc(scores, labels) == pytest.approx(
            sk_metrics.roc_auc_score(labels, [9.0, 9.0, 1.0, -9.0])
        )


class TestErrorDetection:
    def test_against_sklearn(self):
        confidence, correct = random_case(4, levels=3)
        result = metrics.error_detection_metrics(confidence, correct)
        assert result["error_auroc"] == pytest.approx(
            sk_metrics.roc_auc_score(correct, confidence)
        )
        assert result["aupr_success"] == pytest.approx(
            sk_metrics.average_precision_score(correct, confidence)
        )
        assert result["aupr_error"] == pytest.approx(
            sk_metrics.average_precision_score(~correct, -confidence)
        )
        fpr, tpr, _ = sk_metrics.roc_curve(
            correct, confidence, drop_intermediate=False
        )
        assert result["fpr95"] == fpr[np.argmax(tpr >= 0.95)]
        assert result["error_detection_rate"] == pytest.approx(
            detection_rate_by_hand(confidence, correct), abs=1e-12
        )

    def test_single_class_gives_nan(self):
        result = metrics.error_detection_metrics([1.0, 2.0], [True, True])
        assert all(math.isnan(value) for value in result.values())


class TestSelective:
    def test_risk_coverage_hand_case(self):
        coverage, risk, thresholds = metrics.risk_coverage_curve(
            [3, 2, 2, 1], [1, 1, 0, 0]
        )
        np.testing.assert_allclose(coverage, [0.25, 0.75, 1.0])
        np.testing.assert_allclose(risk, [0.0, 1 / 3, 0.5])
        np.testing.assert_allclose(thresholds, [3, 2, 1])

    def test_aurc_hand_case(self):
        # Expected errors among the top k: 0, 1/2, 1, 2.
        expected = (0 + 0.5 / 2 + 1 / 3 + 2 / 4) / 4
        assert metrics.aurc([3, 2, 2, 1], [1, 1, 0, 0]) == pytest.approx(
            expected
        )
        # Generalized risk 0, 1/8, 1/4, 1/2 at coverage 1/4 .. 1.
        expected = (0 + 0.125 + 0.25 + 0.5) / 4 - 0.5 / 8
        assert metrics.augrc([3, 2, 2, 1], [1, 1, 0, 0]) == pytest.approx(
            expected
        )

    @pytest.mark.parametrize("confidence,correct", TIE_CASES)
    def test_areas_are_expectations_over_tie_orders(self, confidence, correct):
        correct = np.array(correct, bool)
        errors = brute_force_expected_errors(confidence, correct)
        n = len(confidence)
        aurc = np.mean(errors[1:] / np.arange(1, n + 1))
        augrc = np.sum((errors[1:] + errors[:-1]) / 2) / n**2
        assert metrics.aurc(confidence, correct) == pytest.approx(aurc)
        assert metrics.augrc(confidence, correct) == pytest.approx(augrc)

    def test_no_ties_is_geifman_definition(self):
        confidence, correct = random_case(5)
        order = np.argsort(-confidence)
        errors = np.cumsum(~correct[order])
        risks = errors / np.arange(1, len(correct) + 1)
        assert metrics.aurc(confidence, correct) == pytest.approx(risks.mean())

    @pytest.mark.parametrize("levels", [None, 2])
    def test_augrc_identity_with_auroc(self, levels):
        confidence, correct = random_case(6, levels=levels)
        accuracy = correct.mean()
        auroc = sk_metrics.roc_auc_score(correct, confidence)
        expected = (1 - auroc) * accuracy * (1 - accuracy) + 0.5 * (
            1 - accuracy
        ) ** 2
        assert metrics.augrc(confidence, correct) == pytest.approx(expected)

    def test_constant_score(self):
        correct = np.arange(10) < 7
        constant = np.zeros(10)
        assert metrics.aurc(constant, correct) == pytest.approx(0.3)
        assert metrics.augrc(constant, correct) == pytest.approx(0.15)

    @pytest.mark.parametrize(
        "seed,levels", [(7, None), (8, 10), (9, 2), (10, 1)]
    )
    def test_aurc_and_e_aurc_by_hand(self, seed, levels):
        confidence, correct = random_case(seed, n=300, levels=levels)
        expected = aurc_by_hand(confidence, correct)
        best = optimal_aurc(correct)
        assert metrics.aurc(confidence, correct) == pytest.approx(
            expected, abs=1e-9
        )
        assert metrics.e_aurc(confidence, correct) == pytest.approx(
            expected - best, abs=1e-9
        )
        assert metrics.e_aurc(confidence, correct) > 0.01
        # The oracle's AURC is the definition applied to the ideal ranking,
        # and tends to Geifman et al.'s r + (1 - r) ln(1 - r) from above
        # (the gap is about r / 2n).
        assert aurc_by_hand(correct, correct) == pytest.approx(best, abs=1e-12)
        r = 1 - correct.mean()
        continuous = r + (1 - r) * math.log(1 - r)
        assert 0 <= best - continuous <= 1 / len(correct)

    def test_e_aurc_hand_cases(self):
        # Any score that ranks every correct input first is optimal.
        confidence, correct = random_case(11)
        separated = confidence + 100 * correct
        assert metrics.e_aurc(separated, correct) == pytest.approx(
            0.0, abs=1e-12
        )
        # Constant score: AURC 1/3 (the error rate); oracle: 2 correct
        # then 1 wrong, risks 0, 0, 1/3.
        assert metrics.e_aurc([0, 0, 0], [1, 1, 0]) == pytest.approx(
            (1 / 3) - (1 / 3) / 3
        )
        # Worst order: risks 1, 1/2, 1/3; oracle 0, 0, 1/3.
        assert metrics.e_aurc([3, 2, 1], [0, 1, 1]) == pytest.approx(
            (1 + 1 / 2 + 1 / 3) / 3 - (1 / 3) / 3
        )

    def test_selective_risk_and_coverage(self):
        confidence = [4, 3, 3, 2, 1]
        correct = [1, 1, 0, 1, 0]
        # 40% coverage needs the tie group: 3 accepted, 1 wrong.
        assert metrics.selective_risk_at_coverage(
            confidence, correct, 0.4
        ) == pytest.approx(1 / 3)
        assert metrics.selective_risk_at_coverage(confidence, correct, 0.2) == 0
        assert metrics.selective_risk_at_coverage(
            confidence, correct, 1.0
        ) == pytest.approx(0.4)
        assert metrics.coverage_at_risk(confidence, correct, 0.0) == 0.2
        assert metrics.coverage_at_risk(confidence, correct, 0.25) == 0.8
        assert metrics.coverage_at_risk([1, 2], [1, 0], 0.0) == 0.0
        with pytest.raises(ValueError, match="risk"):
            metrics.coverage_at_risk(confidence, correct, 1.5)
        with pytest.raises(ValueError, match="coverage"):
            metrics.selective_risk_at_coverage(confidence, correct, 0)

    @pytest.mark.parametrize("levels", [None, 2])
    def test_selective_brute_force(self, levels):
        confidence, correct = random_case(15, n=150, levels=levels)
        values = sorted(set(confidence.tolist()), reverse=True)
        accepted = [confidence >= value for value in values]
        coverages = [mask.mean() for mask in accepted]
        risks = [np.mean(~correct[mask]) for mask in accepted]
        curve = metrics.risk_coverage_curve(confidence, correct)
        np.testing.assert_allclose(curve[0], coverages, rtol=0, atol=1e-12)
        np.testing.assert_allclose(curve[1], risks, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(curve[2], values)
        for target in (0.1, 0.5, 0.9, 1.0):
            first = next(
                i for i, c in enumerate(coverages) if c >= target - 1e-12
            )
            assert metrics.selective_risk_at_coverage(
                confidence, correct, target
            ) == pytest.approx(risks[first], abs=1e-12)
        for risk in (0.0, 0.05, 0.1, 0.3, 1.0):
            allowed = [c for c, r in zip(coverages, risks) if r <= risk + 1e-12]
            assert metrics.coverage_at_risk(
                confidence, correct, risk
            ) == pytest.approx(max(allowed, default=0.0), abs=1e-12)


class TestValue:
    def test_value_curve_hand_case(self):
        thresholds, values, coverage = metrics.value_curve(
            [3, 2, 2, 1],
            [1, 1, 0, 0],
            reward=2.0,
            error_cost=3.0,
            rejection_cost=0.5,
        )
        np.testing.assert_allclose(thresholds, [np.inf, 3, 2, 1])
        np.testing.assert_allclose(coverage, [0, 0.25, 0.75, 1.0])
        expected = [
            -0.5 * 4 / 4,
            (2 - 0.5 * 3) / 4,
            (4 - 3 - 0.5) / 4,
            (4 - 6) / 4,
        ]
        np.testing.assert_allclose(values, expected)
        for threshold, value in zip(thresholds, values):
            assert metrics.rejection_value(
                [3, 2, 2, 1],
                [1, 1, 0, 0],
                threshold,
                reward=2.0,
                error_cost=3.0,
                rejection_cost=0.5,
            ) == pytest.approx(value)

    def test_best_threshold(self):
        assert metrics.best_rejection_threshold(
            [3, 2, 2, 1], [1, 1, 0, 0], 2.0, 3.0, 0.5
        ) == (2.0, pytest.approx(0.125))
        # Ties in value: the threshold accepting more wins.
        assert metrics.best_rejection_threshold(
            [2, 1], [1, 0], error_cost=0.0
        ) == (1.0, 0.5)
        # Rejecting everything is best when every answer is wrong.
        threshold, value = metrics.best_rejection_threshold([2, 1], [0, 0])
        assert threshold == np.inf and value == 0.0

    @pytest.mark.parametrize("levels", [None, 3])
    def test_value_brute_force(self, levels):
        # Costs in halves: twice the total value is an integer, so ties in
        # value are exact.
        confidence, correct = random_case(16, n=120, levels=levels)
        costs = {"reward": 1.0, "error_cost": 4.0, "rejection_cost": 0.5}
        candidates = [np.inf] + sorted(set(confidence.tolist()), reverse=True)
        twice_totals = []
        for threshold in candidates:
            accepted = confidence >= threshold
            twice_totals.append(
                2 * np.sum(accepted & correct)
                - 8 * np.sum(accepted & ~correct)
                - np.sum(~accepted)
            )
        values = np.array(twice_totals) / (2 * len(confidence))
        thresholds, curve, _ = metrics.value_curve(confidence, correct, **costs)
        np.testing.assert_array_equal(thresholds, candidates)
        np.testing.assert_allclose(curve, values, rtol=0, atol=1e-12)
        # The best: the largest total, accepting the most among equals.
        best = max(range(len(candidates)), key=lambda i: (twice_totals[i], i))
        assert metrics.best_rejection_threshold(
            confidence, correct, **costs
        ) == (candidates[best], pytest.approx(values[best], abs=1e-12))
        for index in range(1, len(candidates), 7):
            assert metrics.rejection_value(
                confidence, correct, candidates[index], **costs
            ) == pytest.approx(values[index], abs=1e-12)

    def test_bad_costs(self):
        with pytest.raises(ValueError, match="error_cost"):
            metrics.value_curve([1, 2], [1, 0], error_cost=-1)
        with pytest.raises(ValueError, match="reward"):
            metrics.value_curve([1, 2], [1, 0], reward=float("inf"))
        with pytest.raises(ValueError, match="threshold"):
            metrics.rejection_value([1, 2], [1, 0], threshold="high")

    def test_check_costs(self):
        # One check for the metrics and `compare_scores`.
        from keras_tac.src.metrics import check_costs

        check_costs(-2.0, 0, np.float32(0.5))
        for bad, name in (
            ((1.0, 1.0, -0.5), "rejection_cost"),
            ((float("nan"), 1.0, 0.0), "reward"),
            ((1.0, True, 0.0), "error_cost"),
        ):
            with pytest.raises(ValueError, match=f"Invalid `{name}`"):
                check_costs(*bad)


class TestOOD:
    def test_against_sklearn(self):
        rng = np.random.default_rng(8)
        inside = np.round(rng.normal(1.0, 1.0, 150), 1)
        outside = np.round(rng.normal(0.0, 1.0, 90), 1)
        result = metrics.ood_metrics(inside, outside)
        scores = np.concatenate([inside, outside])
        labels = np.concatenate([np.ones(150), np.zeros(90)]).astype(bool)
        assert result["ood_auroc"] == pytest.approx(
            sk_metrics.roc_auc_score(labels, scores)
        )
        assert result["ood_aupr_in"] == pytest.approx(
            sk_metrics.average_precision_score(labels, scores)
        )
        assert result["ood_aupr_out"] == pytest.approx(
            sk_metrics.average_precision_score(~labels, -scores)
        )
        threshold = np.sort(inside)[::-1][math.ceil(0.95 * 150) - 1]
        assert result["ood_fpr95"] == pytest.approx(
            np.mean(outside >= threshold)
        )
        assert result["ood_detection_rate"] == pytest.approx(
            detection_rate_by_hand(scores, labels), abs=1e-12
        )

    def test_separable_and_identical(self):
        result = metrics.ood_metrics([3.0, 2.0], [1.0, 0.0])
        assert result == {
            "ood_auroc": 1.0,
            "ood_fpr95": 0.0,
            "ood_aupr_in": 1.0,
            "ood_aupr_out": 1.0,
            "ood_detection_rate": 1.0,
        }
        same = metrics.ood_metrics(np.ones(4), np.ones(6))
        assert same["ood_auroc"] == 0.5 and same["ood_fpr95"] == 1.0
        assert same["ood_aupr_in"] == pytest.approx(0.4)
        assert same["ood_detection_rate"] == 0.5

    def test_bad_input(self):
        with pytest.raises(ValueError, match="scores_out"):
            metrics.ood_metrics([1.0], [])
