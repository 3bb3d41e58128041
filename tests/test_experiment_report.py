"""Reports: collecting finished runs, grouping by method, mean ± std over seeds, and the CLI commands run/report."""

import hashlib
import json
from pathlib import Path

import pytest

from prunekit import ConfigError
from prunekit.cli.main import main
from prunekit.experiment import collect_runs, dump_experiment, experiment_from_dict, group_runs, markdown_report, run_name
from prunekit.experiment.report import mean_std, table_rows, write_report

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def make_exp(sparsity, seed, scorer="magnitude", protocol_phases=None, **extra):
    return experiment_from_dict(
        {
            "name": "r",
            "seed": seed,
            "data": "digits",
            "model": {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [8], "num_classes": 10}},
            "pruning": {"sparsity": sparsity, "scorer": scorer},
            "phases": protocol_phases or ["train", "prune", "train"],
            **extra,
        }
    )


def fake_run(root, exp, accuracy, done=True):
    """A finished run directory with hand-written metrics (what the report reads)."""
    d = root / run_name(exp)
    d.mkdir(parents=True)
    (d / "experiment.yaml").write_text(dump_experiment(exp))
    history = [
        {"epoch": 1, "step": 10, "train_loss": 1.0, "lr": 0.1, "metrics": {"accuracy": 0.5}, "sparsity": None, "seconds": 0}
    ]
    metrics = {
        "metric": "accuracy",
        "final": {"accuracy": accuracy, "loss": 0.1},
        "sparsity": {"target": exp.target_sparsity, "masked": exp.target_sparsity, "overall": exp.target_sparsity},
        "phases": [
            {"phase": 0, "kind": "train", "epochs": 1, "history": history},
            {"phase": 1, "kind": "prune", "eval": {"accuracy": 0.3}},
            {"phase": 2, "kind": "train", "epochs": 1, "history": history},
        ],
    }
    layers = [
        {"name": "1.weight", "params": 512, "sparsity": exp.target_sparsity},
        {"name": "3.weight", "params": 80, "sparsity": 0.1},
    ]
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "sparsity.json").write_text(json.dumps({"layers": layers}))
    if done:
        (d / "DONE").write_text("x\n")
    return d


ACC = {  # (scorer, sparsity) -> accuracy per seed 0, 1, 2
    ("magnitude", 0.5): [0.90, 0.92, 0.94],
    ("magnitude", 0.9): [0.80, 0.84, 0.82],
    ("random", 0.5): [0.70, 0.72, 0.74],
    ("random", 0.9): [0.30, 0.40, 0.50],
}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for (scorer, s), accs in ACC.items():
        for seed, a in enumerate(accs):
            fake_run(root, make_exp(s, seed, scorer), a)
    fake_run(root, make_exp(0.7, 0, "random"), 0.1, done=False)  # unfinished: ignored
    return root


def test_groups_by_method_with_mean_std_over_seeds(runs_root):
    runs = collect_runs([runs_root])
    assert len(runs) == 12
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["pruning.scorer=magnitude(p=1.0)", "pruning.scorer=random(seed=0)"]
    rows = table_rows(groups)
    assert [(r["method"][:22], r["target"], r["n"]) for r in rows] == [
        ("pruning.scorer=magnitu", 0.5, 3),
        ("pruning.scorer=magnitu", 0.9, 3),
        ("pruning.scorer=random(", 0.5, 3),
        ("pruning.scorer=random(", 0.9, 3),
    ]
    # hand-computed: mean 0.4, sample std 0.1 for random at 0.9
    assert rows[3]["mean"] == pytest.approx(0.4) and rows[3]["std"] == pytest.approx(0.1)
    md = markdown_report(groups)
    assert "| pruning.scorer=random(seed=0) | 0.9 | 90.00 % | 40.00 ± 10.00 % | 3 | 2 |" in md
    assert "| pruning.scorer=magnitude(p=1.0) | 0.5 | 50.00 % | 92.00 ± 2.00 % | 3 | 2 |" in md


def test_protocols_name_the_methods(tmp_path):
    for protocol, phases in (
        ("oneshot", ["train", "prune", "train"]),
        ("iterative", ["train", {"repeat": {"times": 2, "phases": ["prune", "train"]}}]),
    ):
        for seed in (0, 1):
            fake_run(tmp_path, make_exp(0.9, seed, protocol_phases=phases, protocol=protocol), 0.9)
    assert [g.label for g in group_runs(collect_runs([tmp_path]))] == ["iterative", "oneshot"]


def test_dense_runs_are_one_method_called_dense(tmp_path):
    model = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [8], "num_classes": 10}}
    fake_run(tmp_path, experiment_from_dict({"name": "r", "data": "digits", "model": model, "phases": ["train"]}), 0.95)
    fake_run(tmp_path, make_exp(0.9, 0), 0.9)
    fake_run(tmp_path, make_exp(0.9, 0, "random"), 0.5)
    assert [g.label for g in group_runs(collect_runs([tmp_path]))] == [
        "train1, dense",
        "train1 prune train1, pruning.scorer=magnitude(p=1.0)",
        "train1 prune train1, pruning.scorer=random(seed=0)",
    ]


def test_mean_std_single_value():
    assert mean_std([0.5]) == (0.5, 0.0)


def test_report_never_writes_into_run_dirs_and_is_atomic(runs_root, tmp_path):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in runs_root.rglob("*") if p.is_file()}
    md, html = write_report([runs_root], tmp_path / "rep", html=False)
    assert md.exists() and html is None and not list((tmp_path / "rep").glob(".*tmp"))
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in runs_root.rglob("*") if p.is_file()}
    assert before == after
    one_run = next(p.parent for p in runs_root.rglob("DONE"))
    with pytest.raises(ConfigError) as e:
        write_report([runs_root], one_run / "report", html=False)
    assert e.value.field == "--out"


def test_no_finished_runs_is_an_error(tmp_path):
    fake_run(tmp_path, make_exp(0.5, 0), 0.5, done=False)
    with pytest.raises(ConfigError, match="no finished runs"):
        collect_runs([tmp_path])


# -- command line ------------------------------------------------------------------------------------------------

SPEC = """
name: cli
data: digits
model: {name: mlp, kwargs: {in_features: 64, hidden: [16], num_classes: 10}}
train: {epochs: 1, batch_size: 128, optimizer: adam, lr: 0.01}
pruning: {sparsity: 0.5}
phases: [train, prune, train]
sweep: {pruning.sparsity: [0.5, 0.8], seed: [0, 1]}
"""


def test_cli_runs_the_quick_recipe_skips_it_again_and_reports(tmp_path, capsys):
    recipe = str(RECIPES / "digits_quick.yaml")
    out = tmp_path / "runs"
    assert main(["run", recipe, "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 run(s)" in text and text.count(" new ") == 4 and not out.exists()
    assert main(["run", recipe, "--out", str(out), "--no-progress", "--set", "sweep.seed=[0]"]) == 0
    text = capsys.readouterr().out
    assert text.count(": done;") == 2 and "| run | status |" in text
    assert main(["run", recipe, "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.count(": skipped;") == 2 and text.count(": done;") == 2
    assert main(["report", str(out), "--out", str(tmp_path / "report"), "--no-html"]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("| digits_quick | 0.5 |"))
    assert row.endswith("| 2 | 10 |") and float(row.split("|")[4].split()[0]) > 90  # mean accuracy (%) at 50 %
    assert (tmp_path / "report" / "report.md").exists()


@pytest.mark.parametrize(
    "spec_text, extra, needle",
    [
        ("name: x\ndata: [oops\n", [], "not valid YAML"),
        (SPEC + "trian: {}\n", [], "did you mean 'train'"),
        (SPEC, ["--set", "pruning.sparsity=2"], "pruning.sparsity"),
        (SPEC, ["--set", "sweep.seed=[-1]"], "seed"),
        (SPEC, ["--set", "nonsense"], "--set"),
        (SPEC.replace("phases: [train, prune, train]", "phases: [train, prune, {rewind: stp 3}]"), [], "phases[2].rewind"),
    ],
    ids=["yaml", "unknown-key", "set-pins-swept-key", "sweep-value", "set-syntax", "rewind"],
)
def test_cli_bad_specs_exit_2_with_one_line(tmp_path, capsys, spec_text, extra, needle):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    assert main(["run", str(spec), "--out", str(tmp_path / "runs"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_cli_report_errors_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and "no such directory" in errs[0] and "no finished runs" in errs[1]


def test_a_method_without_a_protocol_name_is_labelled_by_its_phases(tmp_path):
    # e.g. runs made before a recipe's phases became named protocols, reported together with the named ones
    fake_run(tmp_path, make_exp(0.9, 0, protocol="oneshot"), 0.9)
    fake_run(tmp_path, make_exp(0.9, 0, protocol_phases=["train", "prune", {"rewind": "reinit"}, "train"]), 0.8)
    labels = [g.label for g in group_runs(collect_runs([tmp_path]))]
    assert labels == ["oneshot", "train1 prune rewind:reinit train1"]
