import numpy as np
import pytest

from keras_tac import codes


def hamming_distances(matrix):
    """Reference: all pairwise Hamming distances, by explicit comparison."""
    n = len(matrix)
    return [
        int(np.sum(matrix[i] != matrix[j]))
        for i in range(n)
        for j in range(i + 1, n)
    ]


class TestHadamard:
    @pytest.mark.parametrize("order", [1, 2, 4, 8, 16, 64])
    def test_rows_are_orthogonal(self, order):
        matrix = codes.hadamard_matrix(order).astype(int)
        np.testing.assert_array_equal(matrix @ matrix.T, order * np.eye(order))
        assert np.all(matrix[0] == 1)

    @pytest.mark.parametrize("order", [0, 3, 12, -4, 2.0])
    def test_rejects_non_power_of_two(self, order):
        with pytest.raises(ValueError, match="order"):
            codes.hadamard_matrix(order)

    @pytest.mark.parametrize("num_classes", [2, 3, 7, 10, 15, 16, 31])
    def test_codes_are_half_apart(self, num_classes):
        matrix = codes.hadamard_codes(num_classes, rng=1)
        order = codes.hadamard_order(num_classes)
        assert matrix.shape == (num_classes, order)
        assert order > num_classes and order // 2 <= num_classes
        assert set(np.unique(matrix)) == {-1, 1}
        assert set(hamming_distances(matrix)) == {order // 2}
        # The all-ones row is skipped, so no code is constant.
        assert not np.any(np.all(matrix == matrix[:, :1], axis=1))

    def test_seeded(self):
        np.testing.assert_array_equal(
            codes.hadamard_codes(10, rng=3), codes.hadamard_codes(10, rng=3)
        )
        assert not np.array_equal(
            codes.hadamard_codes(10, rng=3), codes.hadamard_codes(10, rng=4)
        )


class TestRandomCodes:
    @pytest.mark.parametrize(
        "num_classes,width", [(17, 16), (100, 16), (64, 6)]
    )
    def test_unique_and_spread(self, num_classes, width):
        matrix = codes.random_codes(num_classes, width, rng=0)
        assert matrix.shape == (num_classes, width)
        assert len({tuple(row) for row in matrix}) == num_classes
        assert set(np.unique(matrix)) <= {-1, 1}
        assert codes.min_hamming_distance(matrix) == min(
            hamming_distances(matrix)
        )

    def test_farther_apart_than_independent_draws(self):
        rng = np.random.default_rng(0)
        picked = codes.min_hamming_distance(codes.random_codes(40, 16, rng=0))
        independent = [
            codes.min_hamming_distance(rng.choice([-1, 1], size=(40, 16)))
            for _ in range(20)
        ]
        assert picked > max(independent)

    def test_too_many_classes(self):
        with pytest.raises(ValueError, match="at most 8"):
            codes.random_codes(9, 3)


class TestClassCodes:
    def test_hadamard_blocks(self):
        matrix, width = codes.class_codes(10, num_blocks=4, seed=0)
        assert width == 16 and matrix.shape == (10, 64)
        for block in np.split(matrix, 4, axis=1):
            assert set(hamming_distances(block)) == {8}
        # Blocks are shuffled independently.
        assert not np.array_equal(matrix[:, :16], matrix[:, 16:32])
        assert codes.min_hamming_distance(matrix) == 32

    def test_random_blocks_beyond_cap(self):
        matrix, width = codes.class_codes(100, num_blocks=2, max_block_width=16)
        assert width == 16 and matrix.shape == (100, 32)
        assert len({tuple(row) for row in matrix[:, :16]}) == 100

    @pytest.mark.parametrize("num_classes", [2, 1000])
    def test_extremes(self, num_classes):
        matrix, _ = codes.class_codes(num_classes, num_blocks=3, seed=5)
        assert matrix.shape[0] == num_classes
        assert codes.min_hamming_distance(matrix) > 0

    def test_seeded(self):
        a, _ = codes.class_codes(30, 3, seed=7)
        b, _ = codes.class_codes(30, 3, seed=7)
        c, _ = codes.class_codes(30, 3, seed=8)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            (dict(num_classes=1, num_blocks=1), "num_classes"),
            (dict(num_classes=True, num_blocks=1), "num_classes"),
            (dict(num_classes=3, num_blocks=0), "num_blocks"),
            (
                dict(num_classes=3, num_blocks=1, max_block_width=0),
                "num_slices",
            ),
            (
                dict(num_classes=20, num_blocks=1, max_block_width=4),
                "num_slices",
            ),
        ],
    )
    def test_bad_arguments(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            codes.class_codes(**kwargs)


def test_min_hamming_distance():
    assert codes.min_hamming_distance(np.array([[1, 1, 1], [1, -1, -1]])) == 2
    assert codes.min_hamming_distance(np.array([[1, -1]])) == 2
    with pytest.raises(ValueError, match="2-D"):
        codes.min_hamming_distance(np.ones(3))
