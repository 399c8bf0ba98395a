"""Stage 02_decontaminate: find training rows that leak benchmark test questions.

Writes clean.jsonl, flagged_pairs.csv (per flagged (row, item) pair: both texts, detector scores and verdicts,
category, rule, action, lm_eval_task / doc_id), contamination_table.csv (the paper's Table 1), the report and the
figure. Steps (stage.py; notebook 02 runs them one by one): load_inputs, embed_texts, candidate_pairs, flag_pairs,
categorise_pairs, choose_removals, contamination_table, summarise, save. Test item views: "question", "full" (with
choices, gold ending or answer) and, for a long stem, "question_only" (for the judge only); a pair scores its best
view, a text longer than the model reads is embedded in windows. Detectors (detectors.REGISTRY): embedding, ngram,
answer, judge (leak_judge).

Categories (the paper's) by these rules, in order; the rule that decided is written beside each pair:
  0. similar_but_different - the prompt lists 3+ lettered options holding under half of the item's choices
     (unless a question of ngram_n words or more is copied whole);
  1. duplicate - the whole question is in the training text (a stem that does not identify its item only with its
     answer in the output, a HellaSwag context only with its gold ending);
  2. duplicate - the question and all its choices (gold ending, answer) are in the training text;
  2b. similar_but_different - the output is another of the item's choices, not its answer;
  3. similar_but_different - a number of the question is not in the training text (unless the judge reads the
     same question and the row only left the numbers out: leak_judge.context_numbers_dropped);
  3b. similar_but_different - the row shares only a passage (no question part, no answer, no judge "same");
  4. duplicate - n-gram overlap >= verbatim_ngram_overlap (question_only: only with the answer in the output);
  4b. similar_but_different - a short prompt asks about numbers the item has nowhere (leak_judge.own_numbers);
  5. duplicate - cosine >= duplicate_threshold and >= verbatim_word_share of the test's words present;
  6. gray_area - cosine >= duplicate_threshold;
  7. gray_area - the judge says same question;
  8. similar_but_different - the answer is not in the output, or names nothing (leak_judge.uninformative_answer);
  9. gray_area - reworded, same numbers, the answer in the output (not a pair the embedding judge read and scored
     under rules.JUDGE_FLOOR, nor a row with its own lettered options that the judge called another question).
`actions` maps category to action; a reviewer's decisions file (decisions.py) overrules it pair by pair; a row is
removed when any of its pairs says so. `save` refuses to overwrite outputs edited by hand since the last run (a
reviewed flagged_pairs.csv) unless `force` (the runner's --force). `training_data: as_released` runs no detection
(stage.passed_through).
"""
