"""tensorlayer: the build that trains is the build that is verified (issue 11, defect 2)."""
import pytest

from tests import trained_build
from tests.conftest import SEED_MODEL

pytestmark = pytest.mark.slow  # starts library workers


@pytest.fixture(scope="module")
def checked():
    return trained_build.run("tensorlayer", SEED_MODEL)


def test_the_identical_dropout_build_that_trains_matches_onnxruntime(checked):
    trained, default = checked["none"]["trained"], checked["none"]["default"]
    assert trained["options"] == {"dropout_masks": "harness"} and default["options"] == {}
    assert trained["harness_masks"] == ["dropout1", "dropout2"] and default["harness_masks"] == []
    assert trained["verdict"] == default["verdict"] == "pass", checked


def test_a_bug_in_the_trained_build_alone_is_caught_at_its_layer(checked):
    result = checked["inference-scaling"]
    assert result["trained"]["verdict"] == "mismatch" and result["trained"]["first_divergent"] == "dropout1"
    assert result["default"]["verdict"] == "pass"  # verifying the library's default build would miss it
