"""tasks/memory.py by simulation: a small Dense teacher trained on a known 800 of scikit-learn's
1,797 digits answers all of them once; then a few hundred draws of which samples validate (from
the 800 it saw, or from the 997 it never saw), which 300 test and which form the pool (the
rest), each judged by the rule: cheap, no training per draw. A teacher trained long remembers
its samples in its confidence, one trained briefly only in its accuracy; the rule finds both and
rarely fires on samples the teacher never saw. Figures in docs/data.md."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pytest
import tf_keras as keras
from scipy.stats import mannwhitneyu
from sklearn.datasets import load_digits

from tasks.load import memorized, place_validation, teacher_errors
from tasks.memory import AccuracyGap, Memory, confidence_gap
from tasks.sources import Arrays
from tasks.splits import Dataset, Pool, Split, Unlabeled
from tasks.task import Classification, MultiLabel

TRAINED, TEST = 800, 300  # the teacher's training samples; labeled test samples of the rest
CONFIDENCE = 0.99  # tasks/load.py MEMORY_CONFIDENCE
DRAWS = 300


@dataclass(frozen=True)
class Answers:
    """A teacher trained on the digits at `seen` (never on those at `unseen`): its margins on
    every digit and whether it answers each right."""

    teacher: keras.Model
    margins: np.ndarray
    right: np.ndarray
    seen: np.ndarray
    unseen: np.ndarray

    def memory(self, validation: np.ndarray, test: np.ndarray, pool: np.ndarray) -> Memory:
        return Memory(AccuracyGap(int(self.right[validation].sum()), len(validation),
                                  int(self.right[test].sum()), len(test)),
                      confidence_gap(self.margins[validation], self.margins[np.r_[test, pool]],
                                     unlabeled=len(pool)))

    def draws(self, validation: int, remembered: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """DRAWS seeded draws of (validation, held-out) digits: validation from the digits the
        teacher saw (`remembered`) or from the others; held out: TEST, then the pool."""
        rng = np.random.default_rng(0)
        found = []
        for _ in range(DRAWS):
            unseen = rng.permutation(self.unseen)
            if remembered:
                found.append((rng.choice(self.seen, validation, replace=False), unseen))
            else:
                found.append((unseen[:validation], unseen[validation:]))
        return found

    def fired(self, validation: int, remembered: bool) -> dict[str, float]:
        """The share of draws on which the rule fires, and each of its signs alone (at
        CONFIDENCE), and a one-sided Mann-Whitney test of the margins in place of the log-rank
        one."""
        fired: dict[str, list[bool]] = {"rule": [], "accuracy": [], "confidence": [],
                                        "mann-whitney": []}
        for val, held in self.draws(validation, remembered):
            memory = self.memory(val, held[:TEST], held[TEST:])
            mann_whitney = mannwhitneyu(self.margins[val], self.margins[held],
                                        alternative="greater").pvalue
            for name, p in (("rule", memory.p_value), ("accuracy", memory.accuracy.p_value),
                            ("confidence", memory.confidence.p_value),
                            ("mann-whitney", mann_whitney)):
                fired[name].append(p < 1 - CONFIDENCE)
        return {name: float(np.mean(found)) for name, found in fired.items()}


@pytest.fixture(scope="module")
def flat_digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32), y


def trained_for(epochs: int, flat_digits: tuple[np.ndarray, np.ndarray]) -> Answers:
    """A Dense teacher trained `epochs` full-batch epochs on TRAINED seeded digits."""
    x, y = flat_digits
    order = np.random.default_rng(0).permutation(len(y))
    seen, unseen = order[:TRAINED], order[TRAINED:]
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                                keras.layers.Dense(10, activation="softmax")])
    teacher.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    teacher.fit(x[seen], y[seen], epochs=epochs, batch_size=TRAINED, verbose=0)
    outputs = teacher.predict(x, batch_size=len(x), verbose=0)
    return Answers(teacher, Classification().margins(outputs), outputs.argmax(axis=-1) == y,
                   seen, unseen)


@pytest.fixture(scope="module")
def long_trained(flat_digits) -> Answers:
    """150 epochs: right on every digit it saw, 96.6 % on the others."""
    return trained_for(150, flat_digits)


@pytest.fixture(scope="module")
def briefly_trained(flat_digits) -> Answers:
    """30 epochs: 99.5 % on the digits it saw, 95.9 % on the others."""
    return trained_for(30, flat_digits)


def test_a_teacher_trained_long_is_found_by_its_confidence_where_accuracy_says_little(
        long_trained):
    """It is as sure of most unseen digits as of the ones it saw; memory shows in the least
    sure answers, which Mann-Whitney weighs no more than the rest."""
    assert long_trained.right[long_trained.seen].all()
    few = long_trained.fired(100, remembered=True)
    assert few["rule"] >= 0.9 and few["confidence"] >= 0.9 and few["accuracy"] <= 0.1
    many = long_trained.fired(400, remembered=True)
    assert many["rule"] >= 0.99 and many["mann-whitney"] <= 0.1


def test_a_teacher_trained_briefly_is_found_by_its_accuracy(briefly_trained):
    """As sure of unseen digits as of seen ones, but wrong on more of them."""
    found = briefly_trained.fired(400, remembered=True)
    assert found["rule"] >= 0.8 and found["confidence"] <= 0.2


@pytest.mark.parametrize("teacher", ["long_trained", "briefly_trained"])
def test_the_rule_rarely_fires_on_samples_the_teacher_never_saw(teacher, request):
    fired = request.getfixturevalue(teacher).fired(200, remembered=False)
    assert fired["rule"] <= 0.015


def test_the_confidence_test_keeps_its_false_alarm_rate_through_ties():
    """Half the margins tied at the largest a float32 softmax reaches, as saturated answers are,
    and a tenth at 0; all tied: never fired."""
    rng = np.random.default_rng(0)
    tied = np.r_[np.full(500, 103.3), np.zeros(100), rng.exponential(5, 400)]
    p = [confidence_gap(*np.split(rng.permutation(tied)[:600], [200])).p_value
         for _ in range(1000)]
    assert np.mean(np.array(p) < 1 - CONFIDENCE) <= 0.015
    assert confidence_gap(np.ones(5), np.ones(7)).p_value == 1.0


def test_margins_tell_apart_answers_whose_top_probability_is_1(long_trained, flat_digits):
    """A float32 softmax of a sure answer is exactly 1.0; the second probability still holds
    the logit gap."""
    outputs = long_trained.teacher.predict(flat_digits[0][long_trained.seen], verbose=0)
    saturated = outputs.max(axis=-1) == 1.0
    gaps = Classification().margins(outputs[saturated])
    assert saturated.sum() >= 5 and len(np.unique(gaps)) == len(gaps) and gaps.min() > 15


def test_the_margin_of_a_row_of_labels_is_its_least_sure_label():
    sigmoid = np.array([[0.9, 0.2], [0.5, 0.99]], np.float32)
    assert MultiLabel().margins(sigmoid) == pytest.approx([np.log(4), 0.0], abs=1e-6)
    assert MultiLabel("linear").margins(np.array([[3.0, -1.0]])) == pytest.approx([1.0])


def digits_dataset(answers: Answers, flat_digits, validation: np.ndarray, pool: bool) -> Dataset:
    """The digits as a data set whose training split is what the teacher saw less `validation`,
    its test split TEST digits it never saw and its pool (with `pool`) the rest of those."""
    x, y = flat_digits
    source = Arrays.of(x)
    unseen = np.setdiff1d(answers.unseen, validation)

    def split(rows: np.ndarray) -> Split:
        return Split(source, rows, y[rows])

    rest = unseen[TEST:]
    data = Dataset(split(np.setdiff1d(answers.seen, validation)), split(validation),
                   split(unseen[:TEST]),
                   pool=Pool(Unlabeled(source, rest[::2]), Unlabeled(source, rest[1::2]))
                   if pool else None)
    return replace(data, teacher_errors=teacher_errors(answers.teacher, data))


def test_a_remembered_validation_split_moves_said_with_the_evidence_and_what_chooses(
        long_trained, flat_digits, caplog):
    validation = long_trained.seen[:400]
    data = digits_dataset(long_trained, flat_digits, validation, pool=True)
    with caplog.at_level(logging.WARNING, logger="tasks.load"):
        moved = place_validation(long_trained.teacher, data, seed=0)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "the teacher scores 100.00 % on the 400 validation samples" in warning
    assert ("answers them more surely than the 997 inputs it never saw, 697 of them unlabeled: "
            "0 of the 400 (0.0 %) as unsurely as the least sure 10 % of those") in warning
    assert "it was trained on them. Validating on 100 of the test split's samples" in warning
    assert ("students are chosen on them and on the 349 inputs of the unlabeled pool's choose "
            "part, all unseen by the teacher") in warning
    assert (len(moved.val), len(moved.test)) == (100, 200)


def test_a_remembered_x_val_stays_said_with_what_chooses(long_trained, flat_digits, caplog):
    data = digits_dataset(long_trained, flat_digits, long_trained.seen[:400], pool=True)
    x_val = replace(data, val=replace(data.val, source=Arrays.of(flat_digits[0])))
    with caplog.at_level(logging.WARNING, logger="tasks.load"):
        assert place_validation(long_trained.teacher, x_val, seed=0) is x_val
    (warning,) = [r.getMessage() for r in caplog.records]
    assert ("x_val is kept as given, so students are chosen on samples the teacher remembers, "
            "where each looks worse than it is, and on the 349 inputs of the unlabeled pool's "
            "choose part, which it never saw") in warning


def test_a_validation_split_the_teacher_never_saw_stays(long_trained, flat_digits):
    validation = long_trained.unseen[-400:]
    assert memorized(long_trained.teacher,
                     digits_dataset(long_trained, flat_digits, validation, pool=True)) is None
