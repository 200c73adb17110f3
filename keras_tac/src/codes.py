"""Fixed binary class codes for Total Activation Classifiers.

Pure NumPy, free of Keras state: every function takes a seed or a
`numpy.random.Generator` and returns plain arrays of `+1` / `-1`.
"""

import math

import numpy as np

from keras_tac.src.api_export import keras_tac_export


@keras_tac_export("keras_tac.codes.hadamard_matrix")
def hadamard_matrix(order):
    """Returns the Sylvester Hadamard matrix of a power-of-two `order`.

    Its rows are `+1`/`-1` vectors, pairwise orthogonal, so two distinct
    rows differ in exactly `order / 2` positions. Row 0 is all ones.

    Args:
        order: int. A power of two, at least 1.

    Returns:
        An int8 array of shape `(order, order)`.

    Example:

    >>> hadamard_matrix(2).tolist()
    [[1, 1], [1, -1]]
    """
    if not isinstance(order, (int, np.integer)) or order < 1:
        raise ValueError(
            f"Invalid `order`: expected a positive power of two. "
            f"Received: order={order!r}"
        )
    if order & (order - 1):
        raise ValueError(
            f"Invalid `order`: expected a power of two. Received: order={order}"
        )
    matrix = np.ones((1, 1), dtype=np.int8)
    while matrix.shape[0] < order:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    return matrix


@keras_tac_export("keras_tac.codes.hadamard_codes")
def hadamard_codes(num_classes, rng=None):
    """Class codes from the rows of a shuffled Hadamard matrix.

    The order is the smallest power of two strictly greater than
    `num_classes`; the all-ones row is skipped, then `num_classes` rows are
    drawn and the columns shuffled. Any two codes differ in exactly half of
    their positions, the most a set of more than two codes can guarantee.

    Args:
        num_classes: int. Number of classes, at least 2.
        rng: `numpy.random.Generator`, int seed or `None`. Source of the
            row and column shuffles. Defaults to `None` (seed 0).

    Returns:
        An int8 array of shape `(num_classes, order)` of `+1`/`-1`.

    Example:

    >>> codes = hadamard_codes(10, rng=0)
    >>> codes.shape, min_hamming_distance(codes)
    ((10, 16), 8)
    """
    _check_num_classes(num_classes)
    rng = _as_generator(rng)
    order = 1
    while order <= num_classes:
        order *= 2
    matrix = hadamard_matrix(order)[1:]
    rows = rng.permutation(order - 1)[:num_classes]
    columns = rng.permutation(order)
    return matrix[rows][:, columns]


@keras_tac_export("keras_tac.codes.random_codes")
def random_codes(num_classes, width, rng=None, num_candidates=None):
    """Unique random class codes kept far apart.

    Draws a pool of unique random `+1`/`-1` vectors, then picks codes one by
    one, each time the candidate farthest (in Hamming distance) from the codes
    already picked. This keeps the minimum pairwise distance well above that
    of codes drawn independently, which have no distance guarantee at all.

    Args:
        num_classes: int. Number of classes, at least 2, at most
            `2 ** width`.
        width: int. Code length.
        rng: `numpy.random.Generator`, int seed or `None`. Defaults to
            `None` (seed 0).
        num_candidates: int or `None`. Size of the candidate pool.
            Defaults to `max(8 * num_classes, 256)`, capped at `2 ** width`.

    Returns:
        An int8 array of shape `(num_classes, width)` of `+1`/`-1` with
        unique rows.

    Example:

    >>> codes = random_codes(100, 16, rng=0)
    >>> codes.shape, len({tuple(row) for row in codes})
    ((100, 16), 100)
    """
    _check_num_classes(num_classes)
    if not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(
            "Invalid `width`: expected a positive int. "
            f"Received: width={width!r}"
        )
    capacity = 2 ** int(width)
    if num_classes > capacity:
        raise ValueError(
            f"Cannot draw {num_classes} unique codes of width {width}: at most "
            f"{capacity} exist. Use more slices per tap (code bits)."
        )
    rng = _as_generator(rng)
    if num_candidates is None:
        num_candidates = max(8 * num_classes, 256)
    num_candidates = int(min(max(num_candidates, num_classes), capacity))
    candidates = _unique_binary_vectors(num_candidates, width, rng)
    # Greedy farthest-point selection; ties broken by the random pool order.
    picked = [0]
    nearest = np.sum(candidates != candidates[0], axis=1)
    nearest[0] = -1
    for _ in range(num_classes - 1):
        index = int(np.argmax(nearest))
        picked.append(index)
        distance = np.sum(candidates != candidates[index], axis=1)
        nearest = np.minimum(nearest, distance)
        nearest[picked] = -1
    return candidates[picked]


@keras_tac_export("keras_tac.codes.class_codes")
def class_codes(num_classes, num_blocks, max_block_width=16, seed=0):
    """The full code matrix of a TAC model: one block per tapped layer.

    Each block has `block_width` columns: the Hadamard order (smallest power
    of two strictly greater than `num_classes`) when it fits under
    `max_block_width`, else `max_block_width` columns of random unique codes
    (`random_codes`). Each block is shuffled independently; the code of a
    class is the concatenation of its rows in the `num_blocks` blocks.

    Args:
        num_classes: int. Number of classes, at least 2.
        num_blocks: int. Number of tapped layers.
        max_block_width: int. Cap on slices (code bits) per tap. Defaults
            to `16`, the reference's cap.
        seed: int. Seed of all shuffles and draws. Defaults to `0`.

    Returns:
        A tuple `(codes, block_width)`: an int8 array of shape
        `(num_classes, num_blocks * block_width)` and the block width.

    Example:

    >>> codes, width = class_codes(10, num_blocks=4, seed=0)
    >>> codes.shape, width
    ((10, 64), 16)
    """
    _check_num_classes(num_classes)
    if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
        raise ValueError(
            "Invalid `num_blocks`: expected a positive int. "
            f"Received: num_blocks={num_blocks!r}"
        )
    if (
        isinstance(max_block_width, bool)
        or not isinstance(max_block_width, (int, np.integer))
        or max_block_width < 1
    ):
        raise ValueError(
            "Invalid `num_slices`: expected a positive int. "
            f"Received: num_slices={max_block_width!r}"
        )
    block_width = hadamard_order(num_classes)
    use_hadamard = block_width <= max_block_width
    if not use_hadamard:
        block_width = int(max_block_width)
        if num_classes > 2**block_width:
            needed = math.ceil(math.log2(num_classes))
            raise ValueError(
                f"Invalid `num_slices`: expected at least {needed} code bits "
                f"per tap for {num_classes} classes ({block_width} tell "
                f"apart at most {2**block_width}). Received "
                f"num_slices={max_block_width}"
            )
    rng = np.random.default_rng(seed)
    blocks = [
        hadamard_codes(num_classes, rng)
        if use_hadamard
        else random_codes(num_classes, block_width, rng)
        for _ in range(num_blocks)
    ]
    return np.concatenate(blocks, axis=1), block_width


@keras_tac_export("keras_tac.codes.hadamard_order")
def hadamard_order(num_classes):
    """The smallest power of two strictly greater than `num_classes`."""
    order = 1
    while order <= num_classes:
        order *= 2
    return order


@keras_tac_export("keras_tac.codes.min_hamming_distance")
def min_hamming_distance(codes):
    """The minimum number of positions in which two distinct codes differ.

    Args:
        codes: array of shape `(num_classes, code_length)`.

    Returns:
        int. For a single code, the code length.

    Example:

    >>> min_hamming_distance(np.array([[1, 1, -1], [1, -1, 1]]))
    2
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(
            "Invalid `codes`: expected a 2-D array (num_classes, code_length). "
            f"Received shape {codes.shape}"
        )
    if codes.shape[0] < 2:
        return int(codes.shape[1])
    # Hamming distance of +1/-1 vectors from their inner products.
    signs = np.sign(codes).astype(np.int64)
    distances = (codes.shape[1] - signs @ signs.T) // 2
    np.fill_diagonal(distances, codes.shape[1])
    return int(distances.min())


def _unique_binary_vectors(count, width, rng):
    """`count` distinct random +1/-1 vectors of length `width`."""
    if width <= 20:
        integers = rng.choice(2**width, size=count, replace=False)
        bits = (integers[:, None] >> np.arange(width)) & 1
    else:
        seen = set()
        rows = []
        while len(rows) < count:
            row = rng.integers(0, 2, size=width)
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(row)
        bits = np.stack(rows)
    return (2 * bits - 1).astype(np.int8)


def _as_generator(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _check_num_classes(num_classes):
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 2
    ):
        raise ValueError(
            "Invalid `num_classes`: expected an int of at least 2. "
            f"Received: num_classes={num_classes!r}"
        )
