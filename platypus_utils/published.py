"""The paper's published leaderboard numbers and the benchmarks' names (core layer: imports nothing
from the package). `PUBLISHED[row]`: one released model's Open LLM Leaderboard v1 scores in percent, as
Lee, Hunter, Ruiz 2023 (arXiv 2308.07317) report them; no standard errors, so comparisons are unpaired.
"""

from __future__ import annotations

from dataclasses import dataclass

BENCHMARKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")  # the leaderboard's order, lm-eval's names
# stage 02 names a benchmark by its test set: TruthfulQA's serves mc1 and mc2 alike
TEST_SET_NAMES = {"truthfulqa_mc2": "truthfulqa"}
TEST_SETS = tuple(TEST_SET_NAMES.get(b, b) for b in BENCHMARKS)
SETTINGS = {  # the leaderboard's shots and metric per benchmark (evaluate.tasks defaults to its shots)
    "arc_challenge": {"num_fewshot": 25, "metric": "acc_norm"},
    "hellaswag": {"num_fewshot": 10, "metric": "acc_norm"},
    "mmlu": {"num_fewshot": 5, "metric": "acc (mean over the 57 subjects)"},
    "truthfulqa_mc2": {"num_fewshot": 0, "metric": "mc2"},
}
HARNESS = (
    "EleutherAI lm-evaluation-harness as the Open LLM Leaderboard v1 ran it in 2023 (its pinned commit "
    "b281b09, hf-causal-experimental, the model's submitted precision), full test sets"
)
PAPER = "Lee, Hunter, Ruiz 2023, Platypus (arXiv 2308.07317), reporting the Open LLM Leaderboard v1"
SOURCE_LABEL = "paper (Lee et al. 2023)"  # how a table names the source in one cell


@dataclass(frozen=True)
class PublishedRow:
    """One released model's published numbers (percent) and where they come from."""

    key: str  # as evaluate.references[].published names it
    label: str  # as a table shows it
    model: str  # the released model on the hub
    values: dict[str, float]  # benchmark -> percent
    average: float  # as published (the mean of the four, rounded)
    harness: str = HARNESS
    source: str = PAPER

    def value(self, benchmark: str) -> float | None:
        return self.values.get(benchmark)


def _row(
    key: str, model: str, arc: float, hs: float, mmlu: float, tqa: float, avg: float, label: str = ""
) -> PublishedRow:
    values = dict(zip(BENCHMARKS, (arc, hs, mmlu, tqa)))
    return PublishedRow(key, label or key, model, values, avg)


PUBLISHED: dict[str, PublishedRow] = {
    r.key: r
    for r in (
        _row("Platypus2-70B-instruct", "garage-bAInd/Platypus2-70B-instruct", 71.84, 87.94, 70.48, 62.26, 73.13),
        _row("Camel-Platypus2-70B", "garage-bAInd/Camel-Platypus2-70B", 71.16, 87.66, 69.80, 57.77, 71.60),
        _row("OpenOrca-Platypus2-13B", "garage-bAInd/OpenOrca-Platypus2-13B", 62.88, 83.19, 59.50, 52.69, 64.56),
        _row("Stable-Platypus2-13B", "garage-bAInd/Stable-Platypus2-13B", 62.71, 82.29, 58.30, 52.52, 63.96),
        _row("Llama-2-13b", "meta-llama/Llama-2-13b-hf", 59.3, 82.15, 55.67, 37.39, 58.63, "Llama-2-13b (base)"),
    )
}
