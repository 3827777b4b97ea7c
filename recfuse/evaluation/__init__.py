"""Offline evaluation and A/B analysis (numpy; TensorFlow only when an experiment trains models).

Modules:
    metrics      per-user Recall/NDCG/HitRate/Precision/MRR/novelty@K, coverage and Gini (pure numpy)
    fullrank     ``evaluate_model`` / ``evaluate_embeddings``: full-ranking evaluation, warm/cold segments
    result       ``EvalResult`` (per-user arrays per segment, atomic JSON)
    baselines    popularity / ItemKNN / EASE fitted on train, hyper-parameters chosen on validation (scipy)
    stats        paired bootstrap, sign-flip permutation, exact paired t-test, Holm, chi-square survival
    compare      variants vs control across seeds (Δ, CI, p, Holm, seed spread, verdict)
    experiment_config / experiment / report   ``recfuse experiment`` (exp.toml → report.md, results.json, plots)
    ab_analysis  ``recfuse ab analyze`` (exposures + clicks → CTR/hit-rate CIs, differences, SRM check)
"""
