"""Experiments: run specs (YAML), sweeps, run directories named by a hash, resume, and reports with plots.

    exps = load_experiments("recipes/digits_quick.yaml")        # a sweep fans out into concrete experiments
    results = run_experiments(exps, "runs")                      # runs/<name>-<hash>/{experiment.yaml, metrics.json, ...}
    write_report(["runs"], "report")                             # report/report.md and report/report.html

The command line is ``prunekit run SPEC.yaml`` and ``prunekit report DIR...``.
"""

from prunekit.experiment.report import RunRecord as RunRecord
from prunekit.experiment.report import collect_runs as collect_runs
from prunekit.experiment.report import group_runs as group_runs
from prunekit.experiment.report import markdown_report as markdown_report
from prunekit.experiment.report import write_report as write_report
from prunekit.experiment.rundir import run_status as run_status
from prunekit.experiment.runner import REINIT_SEED_OFFSET as REINIT_SEED_OFFSET
from prunekit.experiment.runner import RunResult as RunResult
from prunekit.experiment.runner import copy_weights_ as copy_weights_
from prunekit.experiment.runner import run_experiment as run_experiment
from prunekit.experiment.runner import run_experiments as run_experiments
from prunekit.experiment.spec import DataSpec as DataSpec
from prunekit.experiment.spec import EvalConfig as EvalConfig
from prunekit.experiment.spec import Experiment as Experiment
from prunekit.experiment.spec import ModelSpec as ModelSpec
from prunekit.experiment.spec import Phase as Phase
from prunekit.experiment.spec import PrunePhase as PrunePhase
from prunekit.experiment.spec import Rewind as Rewind
from prunekit.experiment.spec import RewindPhase as RewindPhase
from prunekit.experiment.spec import TrainPhase as TrainPhase
from prunekit.experiment.spec import dump_experiment as dump_experiment
from prunekit.experiment.spec import experiment_from_dict as experiment_from_dict
from prunekit.experiment.spec import experiment_hash as experiment_hash
from prunekit.experiment.spec import experiment_to_dict as experiment_to_dict
from prunekit.experiment.spec import load_experiment as load_experiment
from prunekit.experiment.spec import parse_rewind as parse_rewind
from prunekit.experiment.spec import run_name as run_name
from prunekit.experiment.sweep import Sweep as Sweep
from prunekit.experiment.sweep import apply_sets as apply_sets
from prunekit.experiment.sweep import expand as expand
from prunekit.experiment.sweep import load_experiments as load_experiments
