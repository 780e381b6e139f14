"""The recipe of test_build.py: full_mix cut to the MedQA and PMC-VQA fixtures, teachers for a fake endpoint.

The test sets `recipe.source_root`, `recipe.decontamination.benchmark_dir` and each teacher's `base_url` (on the
ConfigDict, or on the command line as `--config.recipe.source_root=...` overrides); until then the URL is a
closed local port, so nothing leaves the machine.
"""

import ml_collections

from configs import full_mix


def get_config() -> ml_collections.ConfigDict:
    config = full_mix.get_config()
    r = config.recipe
    r.name = "test_recipe"
    r.sources = ml_collections.ConfigDict({k: r.sources[k] for k in ("medqa", "pmc_vqa")})
    r.decontamination.benchmarks = "medqa"  # the test sets benchmark_dir to its fixture folder
    for c in r.teachers:
        t = r.teachers[c]
        t.base_url, t.api_key_env, t.max_n_per_request, t.n = "http://127.0.0.1:9/v1", "", 4, 8
        t.backoff_base_s, t.backoff_max_s = 0.005, 0.02
    r.concurrency = 4
    r.traces_per_question = 4
    return config
