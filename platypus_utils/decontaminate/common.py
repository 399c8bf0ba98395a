"""Stage 02's vocabulary: the stage name, the paper's categories and the columns of a flagged pair."""

from __future__ import annotations

from ..layout import DECONTAMINATE

STAGE = DECONTAMINATE
CATEGORIES = ("duplicate", "gray_area", "similar_but_different")
SEVERITY = {c: k for k, c in enumerate(CATEGORIES)}  # lower is more severe
PAIR_COLUMNS = (  # flagged_pairs.csv, in this order
    "pair_id train_index train_source train_text train_output benchmark subject test_id lm_eval_task doc_id test_text "
    "test_answer test_view train_part embedding_cosine ngram_overlap answer_match judge_score judge_verdict "
    "by_embedding by_ngram by_answer by_judge category rule action decision"
).split()
