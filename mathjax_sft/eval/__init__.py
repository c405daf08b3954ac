"""Evaluation: problem sets, answer extraction, grading, Pass@N / pass@k / maj@k metrics, plots.

Modules (import them directly; this package imports nothing, so grading workers start fast):
  problems     load_problems(spec, num_problems) -> list[Problem]; count_reasoning_steps
  answers      extract_answer(text, dataset); normalize_answer(answer)
  grade        Grader(num_workers, timeout_s).grade(golds, preds, dataset) -> list[bool]
  grade_worker the worker process behind Grader (math-verify's parser, time limits)
  equivalence  the workers' strict comparison of parsed answers (exact values compared exactly)
  grade_bench  false credit of near-misses and true credit of right answers on the test sets
  records      make_records(problems, completions, grader); write_records / read_records
  metrics      pass_at_k, maj_at_k, summarize(records) -> JSON-serialisable dict
  plots        pass@k curve, correct-count histogram, data-scaling and steps figures
"""
