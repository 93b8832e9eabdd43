"""The short CI run of the differential fuzzer (tests/fuzz_strategies.py; the long campaign is
scripts/fuzz.py): hypothesis-drawn spec-valid models reaching the spec's corners, checked exactly
golden vs the plain-Python spec reading, vs host C (plain and ASan+UBSan), vs the RTL (Icarus).

Every run draws the same cases (derandomize=True), so CI is reproducible; a failure prints the case.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings

import fuzz_strategies as fz
from runtime import golden
from runtime.spec import validate

QUICK = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
NO_SHRINK = dict(QUICK, phases=[Phase.explicit, Phase.generate])   # a backend failure is not shrunk (builds are slow)


def _assert_all_match(case, verdicts):
    bad = [str(v) for v in verdicts.values() if not v.ok]
    assert not bad, f"{case.describe()}: {'; '.join(bad)}"


@settings(max_examples=70, **QUICK)
@given(case=fz.cases())
def test_golden_equals_spec_reference(case):
    """Logits, class, every layer's phases, synaptic operations and spike counts, exactly."""
    note(case.describe())
    _assert_all_match(case, fz.check(case, ["ref"]))


class Pool:
    """150 drawn cases (derandomized), to pick cases with given corners from."""

    def __init__(self):
        self.cases, self.used = [], set()

        @settings(max_examples=150, **NO_SHRINK)
        @given(case=fz.cases())
        def collect(case):
            self.cases.append(case)

        collect()

    def pick(self, *tags):
        """The first unused case with every tag (else the first one with them)."""
        having = [i for i, c in enumerate(self.cases) if set(tags) <= c.tags]
        assert having, f"no drawn case has {tags}"
        i = next((i for i in having if i not in self.used), having[0])
        self.used.add(i)
        return self.cases[i]


@pytest.fixture(scope="module")
def pool():
    return Pool()


# C in CI: one case per corner that a C kernel or emitter can get wrong
C_CORNERS = [("no-firing-layer",), ("pool-on-input",), ("kind:avgpool", "own-input-code"), ("conv-pad-max",),
             ("pool-pad-max", "kind:maxpool"), ("T=255",), ("T=1",), ("random-encode",), ("big-kernel",),
             ("conv-readout", "acc32")]


@pytest.mark.parametrize("corner", C_CORNERS, ids=["+".join(c) for c in C_CORNERS])
def test_c_equals_golden(corner, pool, tmp_path):
    """Generated C (-Werror) on the host: logits, class and every layer's phases, exactly."""
    case = pool.pick(*corner)
    _assert_all_match(case, fz.check(case, ["c"], work=tmp_path))


SAN_CORNERS = [("product>int32", "acc32", "kind:dense"), ("product>int32", "kind:conv2d"), ("no-firing-layer", "acc32")]


@pytest.mark.parametrize("corner", SAN_CORNERS, ids=["+".join(c) for c in SAN_CORNERS])
def test_c_sanitized_at_the_int32_corners(corner, pool, tmp_path):
    """ASan+UBSan build on models with 32-bit accumulators and single products beyond int32."""
    case = pool.pick(*corner)
    _assert_all_match(case, fz.check(case, ["c-san"], work=tmp_path))


def _have(tool):
    return (Path(sys.executable).parent / tool).exists() or shutil.which(tool) is not None


@pytest.mark.cocotb
@settings(max_examples=2, **NO_SHRINK)
@given(case=fz.cases(small=True, n_images=4))
def test_rtl_equals_golden_and_catches_a_planted_bug(case, tmp_path_factory):
    """Small models under Icarus (gaps, stalls, a mid-frame reset): every firing layer's events,
    logits and class; then one corrupted expected value (``mutate``) must be reported."""
    if not _have("iverilog"):
        pytest.skip("iverilog is not installed")
    note(case.describe())
    work = tmp_path_factory.getbasetemp() / "fuzz-rtl"
    v = fz.check_rtl(case, work)
    if v.status == "refused":
        pytest.skip(f"the RTL refuses this model: {v.detail}")
    assert v.ok, f"{case.describe()}: {v}"
    bad = fz.check_rtl(case, work, mutate=True)
    assert bad.status == "mismatch", f"{case.describe()}: a corrupted expectation gave {bad}"


def test_a_planted_bug_is_caught(pool, tmp_path):
    """A corrupted golden result (one hidden phase, or one logit for a model without a firing
    layer) makes the ref and C checks report a mismatch at that place: they cannot pass vacuously."""
    firing = next(c for c in pool.cases if c.spikes[0] and c.spikes[1] and "acc32" in c.tags)
    for case in (firing, pool.pick("no-firing-layer")):
        m, x = case.model, case.images
        gold = golden.run(m, x)
        assert fz.check_reference(m, x, gold).ok and fz.check_c(m, x, gold, tmp_path).ok
        bad, what = fz.corrupt(m, gold)
        for v in (fz.check_reference(m, x, bad), fz.check_c(m, x, bad, tmp_path)):   # the same C build
            assert v.status == "mismatch", f"{v.backend} missed the planted bug ({what}): {v}"
            assert "image 0" in v.detail, v.detail


def test_the_strategy_reaches_every_corner(pool):
    """Across the drawn cases every corner of CORNERS occurs, hidden layers both spike and stay
    silent, and every model is valid (the strategy's contract)."""
    seen = set().union(*(c.tags for c in pool.cases))
    missing = [c for c in fz.CORNERS if c not in seen]
    assert not missing, f"corners never drawn: {missing}"
    spikes = np.sum([c.spikes for c in pool.cases], axis=0)
    assert spikes.min() > 1000, f"hidden neurons that spike / stay silent: {spikes.tolist()}"
    for c in pool.cases:
        validate(c.model)


def test_known_bug_labels_and_failure_classes():
    """Verdicts are classed by what happened; known bugs are labelled, not hidden."""
    v = fz._known(fz.Verdict("c-san", "ub", "onespike.c:80:30: runtime error: signed integer overflow: ..."))
    assert v.known.startswith("issue 9 #2") and not v.ok
    assert fz._known(fz.Verdict("c", "mismatch", "defined but not used")).known == ""
    assert fz.Verdict("rtl", "match").ok
    with pytest.raises(ValueError, match="unknown backends"):
        fz.check(None, ["gpu"])
