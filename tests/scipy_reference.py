"""scipy's own answers for the statistics a comparison reports, run in a process of its own with
scipy from tests/.reference (the package does not install scipy: torchmetrics would import it in
every run). Reads {"pairs": [[a, b], ...]} as JSON on stdin and writes, per pair, Welch's
two-sided p, the 95% interval of mean(a) - mean(b) and Mann-Whitney's U of a, as JSON."""

import json
import sys

from scipy import stats

pairs = json.load(sys.stdin)["pairs"]
answers = []
for a, b in pairs:
    welch = stats.ttest_ind(a, b, equal_var=False)
    interval = welch.confidence_interval(0.95)
    answers.append(
        {
            "p": float(welch.pvalue),
            "low": float(interval.low),
            "high": float(interval.high),
            "u": float(stats.mannwhitneyu(a, b).statistic),
        }
    )
json.dump(
    {"scipy": stats.__name__ and __import__("scipy").__version__, "pairs": answers}, sys.stdout
)
