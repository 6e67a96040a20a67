"""The real DVC pipeline in a throw-away copy of the project: outputs, MLflow tracking,
reproducibility, experiments, a corrupted batch and a second data set."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import ENV, REPO, TRAINED_TAG, Project

pytestmark = pytest.mark.slow

STAGES = ["generate", "ingest", "validate", "prepare", "tune", "train", "evaluate", "register"]


def mlflow_runs(project: Project) -> list[dict[str, Any]]:
    """Runs, their params and tags, read straight from the embedded store (no mlflow import)."""
    with sqlite3.connect(project.root / "mlflow.db") as db:
        runs = db.execute("SELECT run_uuid FROM runs ORDER BY start_time").fetchall()
        out = []
        for (run_id,) in runs:
            params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid=?", (run_id,)))
            tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid=?", (run_id,)))
            metrics = dict(db.execute("SELECT key, value FROM latest_metrics WHERE run_uuid=?",
                                      (run_id,)))
            out.append({"run_id": run_id, "params": params, "tags": tags, "metrics": metrics})
    return out


def test_pipeline_writes_every_output_and_tracks_the_run(trained_project: Project) -> None:
    p = trained_project
    metrics = json.loads(p.read("reports/metrics.json"))
    assert set(metrics) >= {"roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1",
                            "log_loss"}
    assert metrics["roc_auc"] > 0.7
    assert json.loads(p.read("reports/validation.json"))["passed"] is True
    for plot in ["roc", "pr", "calibration"]:
        assert len(pd.read_csv(p.root / f"reports/plots/{plot}.csv")) > 2
    lock = yaml.safe_load(p.read("dvc.lock"))
    assert sorted(lock["stages"]) == sorted(STAGES)  # (DVC appends a new stage's entry)

    run_info = json.loads(p.read("reports/run.json"))
    [run] = mlflow_runs(p)
    assert run["run_id"] == run_info["run_id"]
    assert run["params"]["train.model"] == "random_forest"
    assert run["params"]["train.n_estimators"] == "50"
    assert run["metrics"]["roc_auc"] == pytest.approx(metrics["roc_auc"])
    # Lineage: the commit the run came from, and the DVC hashes of its data.
    assert run["tags"]["git_commit"] == p.git("rev-parse", "HEAD~1").stdout.strip()
    train_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"]
                     if o["path"] == "data/prepared/train.parquet")
    assert run["tags"]["data_version"] == train_md5
    raw_md5 = lock["stages"]["generate"]["outs"][0]["md5"]
    assert run["tags"]["raw_data_version"] == raw_md5
    with sqlite3.connect(p.root / "mlflow.db") as db:
        inputs = db.execute(
            "SELECT d.name, t.value FROM inputs i JOIN datasets d ON i.source_id = d.dataset_uuid "
            "JOIN input_tags t ON t.input_uuid = i.input_uuid WHERE t.name = 'dvc_md5'"
        ).fetchall()
    assert inputs == [(f"train-{run_info['training_window']}", train_md5)]


def test_a_fresh_repro_writes_the_committed_lock_and_reports(trained_project: Project) -> None:
    """The committed state is what HEAD's code produces: a fresh copy's `dvc repro` writes
    HEAD's dvc.lock and tracked reports again, but for the MLflow run's traces (run.json,
    gate.json's run id and their hashes in the lock). Each stage, path or field that differs
    is named (`make lock` writes them anew)."""
    from mlpipeline.relock import committed_state, differences

    head = committed_state(REPO)
    fresh = committed_state(trained_project.root, TRAINED_TAG)
    assert "reports/run.json" in head and "reports/gate.json" in head
    assert differences(head, fresh) == [], "run `make lock` and commit what it writes"
    # The exceptions are real ones: a new run, with its own id.
    assert json.loads(fresh["reports/gate.json"])["run_id"] != json.loads(
        head["reports/gate.json"])["run_id"]
    # A timing differs on every run: it is MLflow's (fit_seconds), not a DVC output's.
    assert "fit_seconds" not in trained_project.read("models/train_info.json")
    [run] = [r for r in mlflow_runs(trained_project) if r["run_id"] == json.loads(
        fresh["reports/run.json"])["run_id"]]
    assert run["metrics"]["fit_seconds"] > 0


def test_logged_model_has_signature_and_input_example(trained_project: Project) -> None:
    run = json.loads(trained_project.read("reports/run.json"))
    model_dir = next((trained_project.root / "mlartifacts").glob(
        f"models/{run['model_uri'].split('/')[-1]}/artifacts"))
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [i["name"] for i in inputs][:2] == ["age", "annual_income"]
    assert {i["name"]: i["type"] for i in inputs}["region"] == "string"
    assert (model_dir / "input_example.json").is_file()
    assert "sklearn.tree._tree.Tree" in mlmodel["flavors"]["sklearn"]["skops_trusted_types"]
    requirements = (model_dir / "requirements.txt").read_text()
    assert "scikit-learn==" in requirements and "pytest" not in requirements


def test_noop_repro_then_force_repro_is_reproducible(trained_project: Project) -> None:
    p = trained_project
    status = p.dvc("repro")
    assert "Data and pipelines are up to date" in status.stdout
    first_metrics, first_predictions = p.read("reports/metrics.json"), p.read(
        "reports/predictions.csv")
    p.dvc("repro", "--force")
    assert p.read("reports/metrics.json") == first_metrics
    assert p.read("reports/predictions.csv") == first_predictions
    assert len(mlflow_runs(p)) == 2
    # Every output the same bytes again (the MLflow run's traces aside): the lock as well.
    from mlpipeline.relock import committed_state, differences, working_state

    first = committed_state(p.root, TRAINED_TAG)
    first.pop("reports/gate.json")  # now v1 is champion: the gate compares the two
    assert differences(first, working_state(p.root, list(first))) == []


def test_experiment_run_is_tracked_and_comparable(trained_project: Project) -> None:
    p = trained_project
    p.dvc("exp", "run", "-n", "small-forest", "-S",
          "train.hyperparams.random_forest.n_estimators=10", "-S",
          "gate.slices=[region,credit_score]")
    # The gate compared the new model with the champion on every slice of the test split.
    gate = json.loads(p.read("reports/gate.json"))
    slices = {s["slice"]: s for s in gate["slices"]}
    regions = {name for name in slices if name.startswith("region=")}
    assert regions == {f"region={r}" for r in ("north", "south", "east", "west", "central")}
    compared = [s for s in slices.values() if s["passed"] is not None]
    bins = [n for n in slices if n.startswith("credit_score=(") and n[-1] == "]"]
    assert len(bins) == 4 and "credit_score=(missing)" in slices and compared
    assert all(s["champion"] is not None and s["rows"] >= 100 for s in compared)
    failed = [s["slice"] for s in compared if not s["passed"]]
    if failed:  # a worse slice blocks the promotion and is named
        assert not gate["promoted"] and all(f"on {n}:" in gate["reason"] for n in failed)
    assert list(p.root.glob("mlartifacts/**/gate_slices.json"))  # the MLflow table
    shown = json.loads(p.dvc("exp", "show", "--json").stdout)
    names = [e.get("name") for row in shown for e in (row.get("experiments") or [])
             for e in (e.get("revs") or [])]
    assert "small-forest" in names
    diff = p.dvc("metrics", "diff", "--json")
    assert "roc_auc" in diff.stdout
    plots = p.dvc("plots", "show", "--json")
    assert "ROC" in plots.stdout
    runs = mlflow_runs(p)
    assert runs[-1]["params"]["train.n_estimators"] == "10"
    assert runs[-1]["tags"]["git_dirty"] == "true"  # params.yaml differs from the commit
    p.git("checkout", "--", ".")
    p.dvc("checkout", "--force")


def write_landing(project: Project, frames: dict[str, pd.DataFrame]) -> None:
    landing = project.root / "landing"
    landing.mkdir()
    for day, frame in frames.items():
        frame.to_csv(landing / f"{day}.csv", index=False)

    def use_files(params: dict[str, Any]) -> None:
        params["source"].update(kind="files", path="landing")
        params["window"].update(start="2026-01-05", end="2026-01-26")

    project.set_params(use_files)


@pytest.mark.parametrize("corruption, column, rule", [
    ("wrong_type", "loan_amount", "type numeric"),
    ("out_of_range", "age", "range [18.0, 100.0]"),
    ("missing_column", "credit_score", "column present"),
    ("unknown_category", "purpose", "allowed categories"),
])
def test_corrupted_batch_stops_the_pipeline_at_validate(project: Project, corruption: str,
                                                        column: str, rule: str) -> None:
    from mlpipeline.config import load_params
    from mlpipeline.source import synthetic_batch

    source = load_params(project.root).source
    frames = {str(source.start_date + pd.Timedelta(days=7 * i).to_pytimedelta()):
              synthetic_batch(source, i) for i in range(4)}
    bad = frames["2026-01-19"]
    if corruption == "wrong_type":
        bad["loan_amount"] = bad["loan_amount"].astype(object)
        bad.loc[10:14, "loan_amount"] = "12k"
    elif corruption == "out_of_range":
        bad.loc[:2, "age"] = 150
    elif corruption == "missing_column":
        frames["2026-01-19"] = bad.drop(columns=["credit_score"])
    else:
        bad.loc[:99, "purpose"] = "crypto"
    write_landing(project, frames)

    result = project.dvc("repro", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "validate: FAILED" in output
    assert f"column {column!r}, rule {rule}" in output
    # Counted in the batch that broke the rule (1500 rows), not over the whole window.
    expected = {"wrong_type": "5 of 1500 rows", "out_of_range": "3 of 1500 rows",
                "missing_column": "missing from this batch (1500 rows)",
                "unknown_category": "100 of 1500 rows"}
    assert f"batch 2026-01-19.csv: column {column!r}, rule {rule}: {expected[corruption]}" \
        in output
    assert "landing folder landing/" in output  # where to fix it, not data/raw
    assert "Traceback" not in output
    for downstream in ["data/prepared", "models/model.joblib", "mlflow.db"]:
        assert not (project.root / downstream).exists(), downstream
    assert project.git("diff", "--", "reports/metrics.json").stdout == ""  # HEAD's, as cloned
    report = json.loads(project.read("reports/validation.json"))
    assert report["passed"] is False


def test_second_dataset_runs_through_the_same_stages(project: Project) -> None:
    """scikit-learn's breast-cancer data: only params change (source, window, schema)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    features = [{"name": c, "type": "numeric", "min": 0.0,
                 "max": round(float(data[c].max()) * 2, 4)} for c in data.columns[:-1]]

    def breast_cancer(params: dict[str, Any]) -> None:
        params["source"].update(kind="breast_cancer", batch_rows=100, n_batches=6)
        params["window"].update(start="2026-01-05", end="2026-02-09")
        params["validate"].update(min_rows=300, min_batch_rows=50)  # the last batch has 69
        params["prepare"]["reference_rows"] = 200
        params["schema"] = {"target": "target", "classes": [0, 1], "time_column": "observed_at",
                            "features": features}
        params["mlflow"]["experiment"] = "breast-cancer"

    project.set_params(breast_cancer)
    project.dvc("repro")
    metrics = json.loads(project.read("reports/metrics.json"))
    assert metrics["rows"] > 50
    assert metrics["roc_auc"] > 0.9
    [run] = mlflow_runs(project)
    assert run["params"]["source.kind"] == "breast_cancer"


def test_a_model_that_breaks_a_directional_rule_is_not_promoted(trained_project: Project,
                                                                 tmp_path: Path) -> None:
    """A rule the domain sets, broken: not promoted, naming the feature and the share. The
    window is also moved back (as after undoing a CT cycle's params while the registry keeps
    its champion): the new test split lies inside the champion's training rows, so the
    champion is not scored on them, and gate.json, the card and the stage's output say which
    rows were compared (none). (The verdict that follows alone: tests/test_gate.py.)"""
    from mlpipeline.config import load_params
    from mlpipeline.registry import CHAMPION, Registry

    p = Project(tmp_path / "copy")
    shutil.copytree(trained_project.root, p.root, symlinks=True)
    registry = Registry(load_params(p.root))
    champion = registry.version_by_alias(CHAMPION)
    trained_until = champion.tags["trained_until"]

    def wrong_way(params: dict[str, Any]) -> None:
        params["train"]["hyperparams"]["random_forest"]["n_estimators"] = 60  # a new model
        credit = next(f for f in params["schema"]["features"] if f["name"] == "credit_score")
        credit["expect"] = "increasing"  # what no model of these loans does
        params["window"]["end"] = "2026-02-09"  # its rows end before the champion's training
        params["gate"]["min_metrics"] = {"roc_auc": 0.5, "precision": 0.1}  # not in question

    p.set_params(wrong_way)
    out = p.dvc("repro").stdout
    gate = json.loads(p.read("reports/gate.json"))
    assert not gate["promoted"]
    assert gate["champion_after"] == gate["champion_before"]["version"]
    behaviour = {b["feature"]: b for b in gate["behaviour"]}
    assert behaviour["debt_to_income"]["passed"]  # the schema's other rule holds
    credit = behaviour["credit_score"]
    assert not credit["passed"] and credit["share"] > 0.5 and credit["rows"] > 1000
    assert (f"directional credit_score violations: {credit['share']:.4f} vs 0.1500"
            in gate["reason"])
    floors = [c for c in gate["checks"] if c["name"].endswith("floor")]
    assert floors and all(c["passed"] for c in floors)

    test = pd.read_parquet(p.root / "data/prepared/test.parquet")
    assert test["application_date"].max() < pd.Timestamp(trained_until)
    assert gate["comparison"] == {
        "rows": 0, "test_rows": len(test), "champion_trained_until": trained_until,
        "source": "its trained_until tag", "challenger": {}}
    assert gate["champion_before"]["metrics_on_current_test"] is None  # not scored on them
    assert not [c for c in gate["checks"] if "vs champion" in c["name"]]
    assert "comparison skipped, the challenger is not promoted automatically" in out
    card = registry.client.get_model_version(registry.name, gate["version"]).description
    assert f"is not compared: none of the {len(test)} test rows" in card


def test_manual_mode_holds_a_passing_challenger_until_a_person_approves_it(
        trained_project: Project, tmp_path: Path) -> None:
    from mlpipeline.card import GAP
    from mlpipeline.config import load_params
    from mlpipeline.registry import CHALLENGER, CHAMPION, Registry

    p = Project(tmp_path / "copy")
    shutil.copytree(trained_project.root, p.root, symlinks=True)
    champion = Registry(load_params(p.root)).version_by_alias(CHAMPION).version

    def manual(params: dict[str, Any]) -> None:
        params["promotion"]["mode"] = "manual"
        params["gate"]["tolerance"] = 0.05  # the new forest passes the gate, surely
        params["train"]["hyperparams"]["random_forest"]["n_estimators"] = 60

    p.set_params(manual)
    repro = p.dvc("repro")
    assert "already exists" not in repro.stdout + repro.stderr  # MLflow's chatter, dropped
    gate = json.loads(p.read("reports/gate.json"))
    waiting = gate["version"]
    assert gate["awaiting_approval"] and not gate["promoted"]
    assert f"awaiting approval (promotion.mode manual): make approve V={waiting}" \
        in gate["reason"]
    registry = Registry(load_params(p.root))
    assert str(registry.version_by_alias(CHAMPION).version) == str(champion)  # held
    # The champion re-scored on the same rows is a table on this run, not its own metrics.
    assert not [m for m in registry.run_metrics(gate["run_id"]) if m.startswith("champion")]
    assert "gate_champion.json" in {a.path for a in
                                    registry.client.list_artifacts(gate["run_id"])}
    assert str(registry.version_by_alias(CHALLENGER).version) == waiting
    # What the reviewer reads: the model card, the version's description in the registry.
    card = registry.client.get_model_version(registry.name, waiting).description
    assert card.startswith(f"# loan-default v{waiting}\n")
    for part in ("## Purpose", "credit team's approval queue", "## Data", "## Test metrics",
                 f"| roc_auc{GAP} | `{gate['challenger_metrics']['roc_auc']:.4f}`{GAP} |",
                 "**PASSED, awaiting approval**",
                 "### Slices\n\nNot checked (gate.slices is empty).", "### Behaviour",
                 f"| directional credit_score{GAP} | `decreasing (credit_score +50)`{GAP} |",
                 f"| MLflow run{GAP} | `{gate['run_id']}`{GAP} |"):
        assert part in card, part
    assert p.run("make", "-n", "-f", str(REPO / "Makefile"), "card", f"V={waiting}").stdout \
        .count(f"mlpipeline.registry card {waiting}") == 1
    printed = p.run(sys.executable, "-m", "mlpipeline.registry", "card", waiting).stdout
    assert printed.strip() == card.strip()

    # `make approve V=n NOTE=...` runs the registry's approve command.
    dry = p.run("make", "-n", "-f", str(REPO / "Makefile"), "approve", f"V={waiting}",
                "NOTE=read the card")
    assert f"mlpipeline.registry approve {waiting} --note \"read the card\"" in dry.stdout
    env = {**ENV, "GITHUB_ACTOR": "risk-officer"}
    approved = p.run(sys.executable, "-m", "mlpipeline.registry", "approve", waiting,
                     "--note", "read the card", env=env)
    assert f"v{waiting} approved by risk-officer" in approved.stdout
    assert str(registry.version_by_alias(CHAMPION).version) == waiting
    last = registry.decisions()[-1]
    assert (last.reason, last.by, last.note, last.to_version) == (
        "approved", "risk-officer", "read the card", waiting)
    # The registered model's description (the MLflow UI's model page) is the readable table.
    description = registry.client.get_registered_model(registry.name).description
    assert (f"| `v{champion} → v{waiting}`{GAP} | `approved`{GAP} | `risk-officer`{GAP} | "
            f"`read the card`{GAP} |") in description
    assert "**Approved** by risk-officer" in registry.card(waiting)
    assert "awaiting" not in registry.card(waiting)  # the decision replaced the waiting lines
    assert "**PASSED, then approved**" in registry.card(waiting)
    gate_reason = registry.client.get_model_version(registry.name, waiting).tags["gate_reason"]
    assert gate_reason.startswith("passed the gate:") and "held for a decision" in gate_reason
    again = p.run(sys.executable, "-m", "mlpipeline.registry", "approve", waiting,
                  check=False)
    assert again.returncode != 0 and "is not awaiting approval (approved)" in again.stderr

    # Rejected: the champion stays, the version loses `challenger`, the history says who.
    p.set_params(lambda params: params["train"]["hyperparams"]["random_forest"].update(
        n_estimators=70))
    p.dvc("repro")
    turned_down = json.loads(p.read("reports/gate.json"))["version"]
    rejected = p.run(sys.executable, "-m", "mlpipeline.registry", "reject", turned_down,
                     "--note", "drifts on region", env=env)
    assert f"v{turned_down} rejected by risk-officer; champion stays v{waiting}" \
        in rejected.stdout
    assert str(registry.version_by_alias(CHAMPION).version) == waiting
    assert registry.version_by_alias(CHALLENGER) is None
    last = registry.decisions()[-1]
    assert (last.status, last.by, last.to_version) == ("rejected", "risk-officer", turned_down)
    assert registry.history()[-1].to_version == waiting  # not a champion change
    late = p.run(sys.executable, "-m", "mlpipeline.registry", "approve", turned_down,
                 check=False)
    assert late.returncode != 0 and "is not awaiting approval (rejected)" in late.stderr

    # Two waiting challengers in a row: the older loses `challenger` and its waiting state,
    # and the history names its successor.
    held = []
    for trees in (80, 90):
        p.set_params(lambda params, trees=trees: params["train"]["hyperparams"][
            "random_forest"].update(n_estimators=trees))
        p.dvc("repro")
        held.append(json.loads(p.read("reports/gate.json"))["version"])
    older, newer = held
    assert str(registry.version_by_alias(CHALLENGER).version) == newer
    tags = registry.client.get_model_version(registry.name, older).tags
    assert (tags["approval"], tags["superseded_by"]) == ("superseded", newer)
    last = registry.decisions()[-1]
    assert (last.status, last.to_version, last.note) == ("superseded", older,
                                                         f"superseded by v{newer}")
    assert "**Superseded** by" in registry.card(older) and "awaiting" not in registry.card(older)
    listed = p.run(sys.executable, "-m", "mlpipeline.registry", "history").stdout
    assert f"v{older} superseded, champion stays v{waiting}  superseded" in listed
    late = p.run(sys.executable, "-m", "mlpipeline.registry", "approve", older, check=False)
    assert late.returncode != 0 and "is not awaiting approval (superseded)" in late.stderr

    # A retrain the gate rejects leaves the pending decision as it was.
    def unreachable(params: dict[str, Any]) -> None:
        params["gate"]["min_metrics"]["roc_auc"] = 0.99
        params["train"]["hyperparams"]["random_forest"]["n_estimators"] = 100

    p.set_params(unreachable)
    out = p.dvc("repro").stdout
    assert f"challenger stays v{newer}, still awaiting a decision" in out
    assert str(registry.version_by_alias(CHALLENGER).version) == newer
    assert registry.client.get_model_version(registry.name, newer).tags["approval"] == "awaiting"
    unknown = p.run(sys.executable, "-m", "mlpipeline.registry", "card", "99", check=False)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "(`make models` lists the versions)" in unknown.stderr


def test_the_printed_mlflow_links_open_the_model_training_view(
        trained_project: Project) -> None:
    out = trained_project.run(sys.executable, "-m", "mlpipeline.registry", "urls",
                              "--base", "http://127.0.0.1:5000").stdout
    links = [line.split()[-1] for line in out.splitlines() if "http" in line]
    assert len(links) == 3 and all("workflowType=machine_learning" in url for url in links)
    runs = [url for url in links if "/#/experiments/" in url and "/runs?" in url]
    # The runs and charts links open the experiment's saved view: the key metrics, params and
    # gate tags as the table's columns (the UI shows none by default), the key metrics' charts
    # first (the UI lists every metric alphabetically).
    assert len(runs) == 2 and all("viewStateShareKey=key-metrics" in url for url in runs)
    assert all("viewStateShareKey" not in url for url in set(links) - set(runs))
    with sqlite3.connect(trained_project.root / "mlflow.db") as db:
        tags = dict(db.execute("SELECT key, value FROM experiment_tags"))
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags["mlflow.sharedViewState.key-metrics"])
    assert {"metrics.`roc_auc`", "metrics.`recall`", "params.`train.model`",
            "tags.`gate`", "tags.`registered_version`"} <= set(view["selectedColumns"])
    assert [c["metricKey"] for c in view["compareRunCharts"]] == [
        "roc_auc", "pr_auc", "precision", "recall"]
    assert view["compareRunSections"][0]["name"] == "Key metrics"


def test_dvc_plots_draw_offline_for_one_revision_and_a_diff_of_two(trained_project: Project,
                                                                   tmp_path: Path) -> None:
    from mlpipeline.plots_page import other_hosts

    p = Project(tmp_path / "copy")
    shutil.copytree(trained_project.root, p.root, symlinks=True)

    def page(folder: str) -> str:
        html = p.read(f"{folder}/index.html")
        # The page loads nothing from another host (DVC's own loads vega from a CDN) ...
        assert other_hosts(html) == [] and "cdn.jsdelivr" not in html
        # ... and carries vega itself, before the plots that call it.
        assert html.index("window.vegaEmbed=") < html.index("vegaEmbed('#")
        return html

    p.dvc("plots", "show", "-o", "shown")
    assert page("shown").count("vegaEmbed('#") == 4  # ROC, PR, calibration, confusion

    # A second revision whose ROC table differs: `dvc plots diff` draws both.
    roc = p.root / "reports/plots/roc.csv"
    roc.write_text("\n".join(roc.read_text().splitlines()[:-5]) + "\n")
    p.dvc("commit", "-f", "evaluate")
    p.commit("a shorter ROC table")
    p.dvc("plots", "diff", "HEAD~1", "HEAD", "-o", "diffed")
    diffed = page("diffed")
    assert '"rev": "HEAD~1"' in diffed and '"rev": "HEAD"' in diffed


def test_every_command_the_readme_suggests_runs(trained_project: Project,
                                                tmp_path: Path) -> None:
    """The README's bash blocks, run as printed (in a copy of a trained project): each DVC
    command succeeds; each make target exists and names its command (`make -n`: the servers
    they start are run by their own tests)."""
    import re

    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [c for c in commands if c]
    assert {"make demo", "make test"} <= set(commands)
    project = Project(tmp_path / "copy")
    shutil.copytree(trained_project.root, project.root, symlinks=True)
    uv_dvc = ".tools/bin/uv run dvc "
    dvc = [c.removeprefix(uv_dvc).split() for c in commands if c.startswith(uv_dvc)]
    assert len(dvc) >= 7, commands
    for args in dvc:
        project.dvc(*args)  # fails the test with DVC's output
    assert (project.root / "dvc_plots/index.html").is_file()  # what `dvc plots show` says
    for command in (c for c in commands if c.startswith("make ")):
        dry = subprocess.run(["make", "-n", *command.split()[1:]], cwd=REPO,
                             capture_output=True, text=True, env=ENV)
        assert dry.returncode == 0 and dry.stdout.strip(), (command, dry.stderr)
