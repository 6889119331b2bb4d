"""The GPT-2 sentiment notebooks (examples/notebooks/gpt2-sentiment.ipynb, gpt2-control.ipynb) executed headless:
PPO against a sentiment classifier moves the classifier's score the way each notebook says."""

import re

from tests.conftest import has_figure, run_notebook


def _numbers(pattern: str, text: str) -> list[float]:
    found = re.findall(pattern, text)
    return [float(x) for match in found for x in (match if isinstance(match, tuple) else (match,))]


def test_sentiment_notebook_makes_reviews_positive(tmp_path):
    """Measured: mean sentiment 0.06 -> 1.71, rated positive 52% -> 97% (classifier 98% right on held-out reviews)."""
    nb, out = run_notebook("gpt2-sentiment.ipynb", tmp_path)
    assert _numbers(r"classified correctly \(score > 0 means positive\): ([\d.]+)%", out)[0] >= 90
    before = _numbers(r"before PPO: mean sentiment ([-\d.]+), rated positive (\d+)%", out)
    after = _numbers(r"after PPO:  mean sentiment ([-\d.]+), rated positive (\d+)%", out)
    assert after[0] - before[0] >= 1.0, (before, after)
    assert after[1] >= 80 and after[1] - before[1] >= 25, (before, after)
    assert has_figure(nb)


def test_control_notebook_steers_sentiment_by_control_code(tmp_path):
    """Measured (mean classifier score before -> after): [positive] 0.02 -> 1.81, [negative] 0.07 -> -1.83,
    [neutral] 0.08 -> -0.30 (magnitude 1.74 -> 1.52)."""
    nb, out = run_notebook("gpt2-control.ipynb", tmp_path)
    rows = {name: _numbers(r"\S+", rest) for name, rest in re.findall(r"^\[(positive|negative|neutral)\]\s+([-\d. ]+)$", out, re.M)}
    assert set(rows) == {"positive", "negative", "neutral"}, out[-2000:]
    # columns: sentiment before, sentiment after, magnitude before, magnitude after
    assert rows["positive"][1] >= 1.0 and rows["negative"][1] <= -1.0, rows
    assert rows["positive"][1] - rows["negative"][1] >= 2.5 and abs(rows["positive"][0] - rows["negative"][0]) < 0.5, rows
    assert has_figure(nb)
