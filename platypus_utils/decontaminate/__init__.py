"""Stage 02_decontaminate: find training rows that leak benchmark test questions.

Contract. Input: training rows in the Open-Platypus schema (instruction, input, output, data_source;
`input` may be absent) and the benchmark test items (benchmarks.py). Output: `clean.jsonl` (the rows
kept), `flagged_pairs.csv` (one line per flagged (train row, test item) pair: both texts, each
detector's score and verdict, the paper's category, the rule that decided and the action, and the
test item as lm-eval's sample logs name it: `lm_eval_task`, `doc_id`), `contamination_table.csv`
(source x benchmark, the paper's Table 1 form), `decontamination_report.json` and the figure.

Modules, one concern each (import each name from the module that defines it): `common` (categories,
pair columns), `textmatch` (words, numbers, phrases, answers), `views` (test item views, training windows),
`candidates` (the lexical first pass: which items the exact pass reads), `static` (its static-vector half),
`embed`, `index` (the benchmark side in one shared file), `ngram` (the n-gram index), `detectors` (the
detector REGISTRY, candidate pairs, verdicts), `rules` (the categories), `decisions` (a reviewer's file),
`report` (tables, summary, figure), `scoring` (labelled pairs), `inputs` (rows and benchmark items),
`engine_ray` (the same steps on Ray Data), `stage` (the steps composed).

Steps, each a public function returning data (notebook 02 runs them one by one; `detect` composes
steps 2-5, `run_decontaminate` all of them; `check_file` is the standalone command):
  1. load_inputs (read_training_rows, load_benchmark_items)
  2. embed_texts: test views and training windows, embedded when a detector reads cosines
  3. candidate_pairs: per detector; flag_pairs: each detector's verdict (and the judge's score)
  4. categorise_pairs: the paper's category and the rule that decided, beside both texts
  5. choose_removals, contamination_table, summarise (what-ifs: removals_under another policy)
  6. save: artifacts, figure, tables, manifest. `force` (the runner's --force) lets it overwrite
     outputs edited by hand since the last run (a reviewed flagged_pairs.csv); without it, it refuses.

How a pair is read.
  * Test item views: "question" (the stem; HellaSwag's context) and "full" (the question with its
    choices for MMLU and ARC, with its gold ending for HellaSwag, with its answer for TruthfulQA). A
    pair scores its best view. An MMLU/ARC stem under `ngram_min_tokens` words ("Which of the
    following is true?") does not identify its item: it finds candidates, but the category rules
    read only the full view's cosine for it, and its stem counts as verbatim only with its answer.
    A long stem (a passage or context, then its question) has a third view, "question_only": its
    question sentence(s) alone (views.question_only). It never identifies its item and no cosine
    rule reads it: it finds candidates for the judge, which reads them against the question alone
    and needs the answer to agree (a rewording that keeps the question and drops the passage).
  * Training side: instruction + input ("prompt") and, with `search_outputs`, the output. A text
    longer than the embedding model reads (all-MiniLM-L6-v2: 256 word pieces) is embedded in
    overlapping windows (`window_overlap`); its cosine is the max over windows.
Detectors (`detectors`; each an entry of detectors.REGISTRY: the cosine it reads from and its verdict),
each reported on its own and combined:
  embedding  cosine >= similarity_threshold (the paper's), flagging *every* training row above it,
             not only the most similar one (the authors' code kept near-copies of the row it removed);
  ngram      share of the test view's 13-grams found in the training text >= ngram_overlap_threshold
             (GPT-3 / lm-eval), which catches long verbatim passages; LaTeX read as plain and choice
             labels left out on both sides, so "A: coal" matches "coal";
  answer     cosine >= answer_detector_threshold, every number of the test question in the training
             prompt and the test answer in the training output (rewordings below 0.8);
  judge      (on by default) platypus_utils.leak_judge reads candidates at cosine >= judge_threshold whose
             numbers agree and says whether they are the same question, possibly reworded (rewordings whose
             answer is reworded too, which the string tests keep); a long stem's question_only view is read by
             the judge alone, against the question without its passage. Measured with score_pairs on the
             labelled pairs, per split (bench/bench_detectors.py; the figures of the splits held out from
             tuning: README, "Leaks, rewordings included").
Categories (the paper's) by explicit rules, in this order; the rule that decided is written beside
each pair. Numbers are compared after LaTeX-to-plain, signs apart and comma lists split, so
`x^3-2x+1` and `x^3 - 2x + 1` agree.
  0. similar_but_different - other options: the training prompt lists 3+ lettered options that hold fewer
     than half of the test item's choices (reworded choices still count): another item with MMLU's generic
     stem ("Which of the following is a correct statement?"); not when a question of ngram_n words or more is
     copied whole (rule 1 then: it is the item, whatever options the row lists);
  1. duplicate - the whole test question is in the training text (prompt or output; words in order,
     case, punctuation, spacing and LaTeX markup ignored); a stem that does not identify its item
     counts only when the test answer is in the training output too, a HellaSwag context only with
     its gold ending (rules 1, 4 and 5: a copied context with another continuation is not the item);
  2. duplicate - the question and all its choices (gold ending, answer) are in the training text, in
     any order and with any labels;
  2b. similar_but_different - another answer: the training output is one of the test item's other choices (the
     whole output, LaTeX, case and spacing aside) and does not give its answer: the same shape asked of another
     object ("Z_3[x]/(x^2 + c)" -> 1 against the test's "Z_3[x]/(x^3 + x^2 + c)" -> 2);
  3. similar_but_different - a number of the test question is not in the training text (a long
     passage shared with one number changed is the same shape with other numbers, not a copy); the
     question part alone when the pair was found through the question_only view; not when the judge reads the
     same question and the row only left the numbers out (named none of its own, its output stating the answer:
     leak_judge.context_numbers_dropped);
  3b. similar_but_different - the row shares only a passage: the item's question part is not in it, its
     answer not in the output, and the judge did not read the same question;
  4. duplicate - n-gram overlap >= verbatim_ngram_overlap (any view; near-verbatim; through the question_only
     view only with the test answer in the output: a passage item's generic question sentence is not its item);
  4b. similar_but_different - a short training prompt asks about numbers the test item has nowhere
     (another object: order five against order seven, Z_24 against Z_26; leak_judge.own_numbers);
  5. duplicate - cosine >= duplicate_threshold and >= verbatim_word_share of the test's words present;
  6. gray_area - cosine >= duplicate_threshold (same meaning in other words);
  7. gray_area - the judge says same question (when it read the pair);
  8. similar_but_different - the test answer is not in the training output, or it names nothing
     ("True, False", "II only": leak_judge.uninformative_answer);
  9. gray_area - reworded, same numbers and the test answer in the training output; not for a row that lists
     its own lettered options when the judge read the pair and called it another question (its answer is one of
     the options both items share: similar_but_different).
The action per category comes from `actions` (default: remove duplicate and gray-area); a reviewer's
decisions file (`decisions`: pair_id -> keep / remove, see decisions.py) overrules it pair by pair; a row is
removed when any of its pairs says so.

With `training_data: as_released` (Open-Platypus as the authors released it, decontaminated by them)
no leak detection runs: `passed_through` keeps every row of 01 and the stage still writes every
artifact later stages read (clean.jsonl = 01's rows, flagged_pairs.csv with its header and no pair,
the empty table, the report saying why and the manifest); no benchmark is loaded.
"""
