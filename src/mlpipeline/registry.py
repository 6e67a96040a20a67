"""The model registry: versions, aliases, lineage and the promotion history, over MLflow's
client API only (nothing edits the store by hand).

Aliases: `champion` is what production serves, `challenger` the newest registered version,
`previous` the champion before the last change. MLflow keeps no history of where an alias
pointed, so every champion change is also written as an append-only registered-model tag
`promotion.NNNNNN` = {"time", "from", "to", "reason", "note", "status", "by"}; a challenger
rejected by a person (`make reject`) is written there too, with status `rejected`, and one
that a newer waiting challenger replaced with status `superseded`. The
registered model's description shows that history as a table (the MLflow UI's model page).

A promotion is atomic for readers of the history, whatever crashes: under a lock, the entry
is written first as `pending`, then the aliases move, then the entry is marked `done`. A
pending entry left by a killed process is settled by the next registry command: `done` if
the alias did move, `aborted` (and `previous` put back) if not. The lock is a registered
model `<name>.promotion-lock`: creating a model is atomic on every MLflow store, the SQLite
file and a tracking server alike, so concurrent promoters (separate processes, machines)
queue instead of both reading the same "from". A lock whose owner died is broken.

CLI (`python -m mlpipeline.registry ...`):
  list                      versions with aliases, key metrics and gate result, then history
  lineage VERSION           where one version came from
  history [--at TIME]       promotion history, or which version was champion at TIME
  rollback [--to VERSION]   champion back to `previous` (or to VERSION)
  promote VERSION           manual promotion
  approve VERSION [--note]  promotion.mode manual: the challenger that passed the gate becomes
                            champion (`make approve V=n NOTE=...`)
  reject VERSION [--note]   ... or is dropped, never to be served (`make reject V=n`)
  card VERSION              the version's model card (`make card V=n`)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import getpass
import io
import json
import os
import random
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from mlpipeline import tracking
from mlpipeline.card import AWAITING_LINE, AWAITING_PREFIX, markdown_table, with_shadow_evidence
from mlpipeline.config import Params, load_params

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
HISTORY_PREFIX = "promotion."
PENDING, DONE, ABORTED, REJECTED = "pending", "done", "aborted", "rejected"
SUPERSEDED = "superseded"  # a waiting challenger replaced by a newer one (status and approval)
AWAITING = "awaiting"  # a version's `approval` tag under promotion.mode manual or shadow
# A waiting version tagged `shadow: true` answers every request beside the champion on every
# replica that polls the registry (serving.champion): the registry decides, not a replica's
# own params.yaml. `register` sets it under promotion.mode shadow; a person may set it too.
SHADOW_TAG = "shadow"

LOCK_SUFFIX = ".promotion-lock"
LINEAGE_TAGS = ["run_id", "git_commit", "git_dirty", "data_version", "raw_data_version",
                "training_window", "trained_until", "hyperparams_source", "tune_run_id",
                "params_hash", "model_md5", "gate", "gate_reason"]


def in_shadow(version: Any) -> bool:
    """Whether a version (the `challenger`) is the shadow: awaiting a decision, tagged
    `shadow: true`. The replicas and the shadow report both ask this."""
    return (version is not None and version.tags.get("approval") == AWAITING
            and version.tags.get(SHADOW_TAG) == "true")


@dataclass(frozen=True)
class Promotion:
    time: str  # ISO 8601, UTC
    from_version: str | None
    to_version: str
    reason: str  # gate pass | rollback | manual | approved | rejected | superseded
    note: str = ""
    # pending while the aliases move; done; aborted (never took effect); rejected (a person
    # turned the challenger `to` down: the champion did not move); superseded (a newer waiting
    # challenger, named in `note`, replaced `to`: the champion did not move)
    status: str = DONE
    previous_before: str | None = None  # where `previous` pointed, to put it back on abort
    by: str = ""  # who: the GitHub actor in Actions, else the user running the command

    def as_tag(self) -> str:
        return json.dumps({"time": self.time, "from": self.from_version, "to": self.to_version,
                           "reason": self.reason, "note": self.note, "status": self.status,
                           "previous_before": self.previous_before, "by": self.by})

    @classmethod
    def from_tag(cls, value: str) -> Promotion:
        data = json.loads(value)
        return cls(data["time"], data["from"], data["to"], data["reason"], data.get("note", ""),
                   data.get("status", DONE), data.get("previous_before"), data.get("by", ""))


def actor() -> str:
    """Who is acting: GitHub's actor in a workflow, else the user running the command."""
    try:
        return os.environ.get("GITHUB_ACTOR") or getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return f"uid {os.getuid()}"


def history_markdown(entries: list[Promotion]) -> str:
    """The promotion history as a Markdown table, newest first: what the MLflow UI shows as
    the registered model's description."""
    rows = []
    for p in reversed(entries):
        change = (f"v{p.to_version} {p.status} (champion stays v{p.from_version})"
                  if p.status in (REJECTED, SUPERSEDED) else
                  f"v{p.from_version} → v{p.to_version}" if p.from_version else
                  f"none → v{p.to_version}")
        rows.append([p.time.replace("T", " ").replace("+00:00", ""), change, p.reason, p.by,
                     p.note])
    return "\n".join(["Champion changes and approval decisions, newest first (the "
                      "`promotion.*` tags hold the same as JSON).", "",
                      *markdown_table(["time (UTC)", "champion", "decision", "by", "note"],
                                      rows)]) + "\n"


def settle(pending: Promotion, champion: str | None) -> str:
    """The status a pending promotion really has, given where `champion` points now.

    Settled before any later promotion is written, so the champion cannot have moved since."""
    return DONE if champion == pending.to_version else ABORTED


def window_end(version: Any) -> dt.date | None:
    """The last day of a version's training window (its `training_window` tag, start..end)."""
    window = version.tags.get("training_window", "")
    return dt.date.fromisoformat(window.split("..")[1]) if ".." in window else None


def champion_at(history: list[Promotion], when: dt.datetime) -> str | None:
    """Which version was champion at `when`, from the promotion history (oldest first)."""
    current = None
    for event in history:
        if dt.datetime.fromisoformat(event.time) <= when:
            current = event.to_version
    return current


class Registry:
    """One registered model in the configured MLflow registry."""

    def __init__(self, params: Params) -> None:
        self.params = params
        self.client = tracking.client(params)
        self.name = params.mlflow.registered_model

    def version_by_alias(self, alias: str) -> Any | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except tracking.mlflow.exceptions.MlflowException:
            return None  # no such alias yet, or no such model yet

    def register(self, run: dict[str, str], *, challenger: bool = True) -> str:
        """A new version from a logged model, tagged with its lineage, alias `challenger`
        (unless `challenger` is False: a waiting challenger keeps it until the gate passes
        the new one)."""
        try:
            self.client.get_registered_model(self.name)
        except tracking.mlflow.exceptions.MlflowException:
            self.client.create_registered_model(
                self.name, description="Managed by the pipeline's `register` stage; "
                                       "see the `promotion.*` tags for the champion history.")
        # MLflow's own registration links the version to the logged model (its id, which a
        # tracking server requires for a `models:/m-...` source; SQLite does not check) and
        # tags the logged model with its version, so its page shows "registered".
        # MLflow prints "Registered model ... already exists" for every version: we made the
        # model above, on purpose, so its chatter is dropped (errors still raise).
        with tracking.store(self.params), contextlib.redirect_stderr(io.StringIO()):
            version = tracking.mlflow.register_model(
                run["model_uri"], self.name,
                tags={key: run[key] for key in LINEAGE_TAGS if key in run})
        if challenger:
            self.set_challenger(str(version.version))
        return str(version.version)

    def set_challenger(self, version: str) -> None:
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def history(self, *, settled: bool = True) -> list[Promotion]:
        """Champion changes that took effect, oldest first (a pending one is settled first)."""
        if settled and any(p.status == PENDING for _, p in self._entries()):
            with self.promotion_lock():
                self._settle_pending()
        return [p for _, p in self._entries() if p.status == DONE]

    def decisions(self) -> list[Promotion]:
        """Champion changes and rejected or superseded challengers, oldest first: the readable
        history."""
        self.history()  # settles a pending entry first
        return [p for _, p in self._entries() if p.status in (DONE, REJECTED, SUPERSEDED)]

    def _publish_history(self) -> None:
        self.client.update_registered_model(self.name,
                                            description=history_markdown(self.decisions()))

    def _next_key(self) -> str:
        """The tag of the next history entry (call with the promotion lock held)."""
        return f"{HISTORY_PREFIX}{len(self._entries()) + 1:06d}"

    def _entries(self) -> list[tuple[str, Promotion]]:
        tags = self.client.get_registered_model(self.name).tags
        return [(k, Promotion.from_tag(tags[k])) for k in sorted(tags)
                if k.startswith(HISTORY_PREFIX)]

    def _settle_pending(self) -> None:
        """Settle what a killed promoter left (call with the lock held)."""
        champion = self.version_by_alias(CHAMPION)
        for key, entry in self._entries():
            if entry.status != PENDING:
                continue
            status = settle(entry, str(champion.version) if champion else None)
            if status == ABORTED:  # the alias never moved: `previous` may have
                if entry.previous_before:
                    self.client.set_registered_model_alias(self.name, PREVIOUS,
                                                           entry.previous_before)
                elif entry.from_version:
                    self.client.delete_registered_model_alias(self.name, PREVIOUS)
            print(f"registry: an interrupted promotion v{entry.from_version} -> "
                  f"v{entry.to_version} ({entry.time}) is settled as {status}")
            self.client.set_registered_model_tag(
                self.name, key, replace(entry, status=status).as_tag())

    def set_champion(self, version: str, reason: str, note: str = "") -> Promotion:
        """Move `champion` to `version`; the old champion becomes `previous`; log the change.

        Under the promotion lock: the history entry (pending), the aliases, the entry (done)."""
        self.client.get_model_version(self.name, version)  # fails clearly if it does not exist
        with self.promotion_lock():
            self._settle_pending()
            old, previous = self.version_by_alias(CHAMPION), self.version_by_alias(PREVIOUS)
            old_version = str(old.version) if old else None
            if old_version == version:
                raise SystemExit(f"registry: v{version} is already the champion")
            event = Promotion(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              old_version, version, reason, note, PENDING,
                              str(previous.version) if previous else None, actor())
            key = self._next_key()
            self.client.set_registered_model_tag(self.name, key, event.as_tag())
            if old_version:
                self.client.set_registered_model_alias(self.name, PREVIOUS, old_version)
            self.client.set_registered_model_alias(self.name, CHAMPION, version)
            event = replace(event, status=DONE)
            self.client.set_registered_model_tag(self.name, key, event.as_tag())
        self._publish_history()
        return event

    def _awaiting(self, version: str) -> Any:
        """`version` if it is the challenger waiting for a person's decision; else exit naming
        what it is instead."""
        mv = self.client.get_model_version(self.name, version)  # fails clearly if unknown
        challenger = self.version_by_alias(CHALLENGER)
        if mv.tags.get("approval") != AWAITING:
            state = mv.tags.get("approval") or f"gate {mv.tags.get('gate', 'not run')}"
            raise SystemExit(f"registry: v{version} is not awaiting approval ({state}); only "
                             "a challenger that passed the gate under promotion.mode manual "
                             "or shadow is")
        if challenger is None or str(challenger.version) != version:
            newer = f"v{challenger.version}" if challenger else "none"
            raise SystemExit(f"registry: v{version} is no longer the challenger ({newer} is); "
                             f"decide on {newer}, or promote v{version} by hand with "
                             f"`python -m mlpipeline.registry promote {version}`")
        return mv

    def approve(self, version: str, note: str = "", reason: str = "approved") -> Promotion:
        """A person (or, reason `shadow evidence`, a CT cycle) lets the waiting challenger
        become champion."""
        self._awaiting(version)
        event = self.set_champion(version, reason, note)
        self.tag_version(version, {"approval": reason, "approved_by": event.by})
        self._card_decision(version, event)
        return event

    def record_shadow_evidence(self, version: str, evidence: dict[str, Any]) -> None:
        """The shadow's live evidence into the version's model card."""
        self.client.update_model_version(
            self.name, version, description=with_shadow_evidence(self.card(version), evidence))

    def describe(self, version: str, run_id: str, card: str) -> None:
        """The model card as the version's description (the MLflow UI's version page) and as
        the run's `model_card.md`."""
        self.client.update_model_version(self.name, version, description=card)
        self.client.log_text(run_id, card, "model_card.md")

    def card(self, version: str) -> str:
        card = self.client.get_model_version(self.name, version).description
        return card or f"v{version} has no model card: it was registered before cards were."

    def _card_decision(self, version: str, event: Promotion) -> None:
        """The decision into the card: the gate line no longer says "awaiting", and a
        Decision section says who decided what, when."""
        decision = ("Rejected" if event.status == REJECTED else
                    "Superseded" if event.status == SUPERSEDED else
                    "Promoted on shadow evidence" if event.reason == "shadow evidence" else
                    "Approved")
        card = self.card(version).replace(AWAITING_LINE, f"**PASSED, then {decision.lower()}**")
        card = "\n".join(line for line in card.splitlines()
                         if not line.startswith(AWAITING_PREFIX))
        line = (f"\n## Decision\n\n**{decision}** by {event.by} at {event.time}"
                + (f": {event.note}" if event.note else "") + "\n")
        self.client.update_model_version(self.name, version,
                                         description=card.rstrip() + "\n" + line)

    def hold(self, version: str, *, shadow: bool, replaced: Any | None) -> None:
        """The gate passed `version` under promotion.mode manual or shadow: it waits for a
        decision (in shadow, answering every request beside the champion). `replaced`, the
        challenger before it, if it was still waiting, is superseded: one decision pending."""
        self.tag_version(version, {"approval": AWAITING,
                                   **({SHADOW_TAG: "true"} if shadow else {})})
        self.set_challenger(version)
        if replaced is not None and replaced.tags.get("approval") == AWAITING:
            self.supersede(str(replaced.version), by=version)

    def supersede(self, version: str, by: str) -> Promotion:
        """The waiting `version` is replaced by the newer challenger `by`: tagged `approval:
        superseded`, never to be served; the history names its successor."""
        with self.promotion_lock():
            self._settle_pending()
            champion = self.version_by_alias(CHAMPION)
            event = Promotion(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              str(champion.version) if champion else None, version, SUPERSEDED,
                              f"superseded by v{by}", SUPERSEDED, by=actor())
            self.client.set_registered_model_tag(self.name, self._next_key(), event.as_tag())
            self.tag_version(version, {"approval": SUPERSEDED, "superseded_by": by})
        self._publish_history()
        self._card_decision(version, event)
        return event

    def reject(self, version: str, note: str = "") -> Promotion:
        """A person turns the waiting challenger down: it loses `challenger`, keeps its tags,
        and the decision goes to the history; the champion does not move."""
        self._awaiting(version)
        with self.promotion_lock():
            self._settle_pending()
            champion = self.version_by_alias(CHAMPION)
            event = Promotion(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                              str(champion.version) if champion else None, version, "rejected",
                              note, REJECTED, by=actor())
            key = self._next_key()
            self.client.set_registered_model_tag(self.name, key, event.as_tag())
            self.tag_version(version, {"approval": "rejected", "rejected_by": event.by})
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        self._publish_history()
        self._card_decision(version, event)
        return event

    @contextmanager
    def promotion_lock(self, wait_seconds: float = 120) -> Iterator[None]:
        """Hold `<name>.promotion-lock` (a registered model: creating one is atomic)."""
        lock = self.name + LOCK_SUFFIX
        deadline = time.monotonic() + wait_seconds
        while True:
            # `since` is when this attempt takes the lock, not when the wait began: a waiter
            # that acquired late must not look expired to the others (they would break in).
            owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                "since": time.time()})
            try:
                self.client.create_registered_model(
                    lock, tags={"owner": owner},
                    description=f"Held while the champion of {self.name} moves.")
                break
            except tracking.mlflow.exceptions.MlflowException as error:
                if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                    # SQLite's store looks the name up after a failed insert: the holder
                    # released the lock in between. Free again, so try again.
                    continue
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            stale = self._stale_lock_owner(lock, wait_seconds)
            # Break only the lock judged stale: its owner may have released it and died (a
            # promoter exits right after), and another may hold it since. Deleting that
            # one let two promoters in at once (one history entry lost).
            if stale is not None and self._lock_owner(lock) == stale:
                with contextlib.suppress(tracking.mlflow.exceptions.MlflowException):
                    self.client.delete_registered_model(lock)
                continue
            if time.monotonic() > deadline:
                raise SystemExit(f"registry: another promotion has held {lock!r} for over "
                                 f"{wait_seconds:.0f} s; try again, or delete that model if "
                                 "its owner is gone")
            time.sleep(random.uniform(0.05, 0.2))
        try:
            yield
        finally:
            with contextlib.suppress(tracking.mlflow.exceptions.MlflowException):
                self.client.delete_registered_model(lock)

    def _lock_owner(self, lock: str) -> str | None:
        try:
            return str(self.client.get_registered_model(lock).tags.get("owner", "{}"))
        except tracking.mlflow.exceptions.MlflowException:
            return None  # released meanwhile

    def _stale_lock_owner(self, lock: str, lease_seconds: float) -> str | None:
        """The lock's owner (as tagged) if it died on this host or has held the lock longer
        than any promotion; None while it is alive, or when the lock is free."""
        tagged = self._lock_owner(lock)
        if tagged is None:
            return None
        owner = json.loads(tagged)
        if time.time() - owner.get("since", 0) > lease_seconds:
            return tagged
        if owner.get("host") == socket.gethostname():
            try:
                os.kill(int(owner["pid"]), 0)
            except ProcessLookupError:
                return tagged
            except (PermissionError, KeyError, ValueError):
                return None
        return None

    def rollback(self, to: str | None = None) -> Promotion:
        if to is None:
            previous = self.version_by_alias(PREVIOUS)
            if previous is None:
                raise SystemExit("registry: no `previous` version to roll back to; "
                                 "name one with --to VERSION")
            to = str(previous.version)
        return self.set_champion(to, "rollback")

    def load_sklearn(self, version: str) -> Any:
        """The scikit-learn pipeline of one version."""
        with tracking.store(self.params):
            return tracking.mlflow.sklearn.load_model(f"models:/{self.name}/{version}")

    def download_run_file(self, run_id: str, path: str, dst: str) -> str:
        """One artefact of a run (e.g. the reference sample), downloaded into `dst`."""
        return str(self.client.download_artifacts(run_id, path, dst))

    def record_gate(self, run_id: str, report: dict[str, Any], tags: dict[str, str]) -> None:
        """The gate's verdict on the training run it judged: tags and gate.json; as MLflow
        tables, the champion re-scored on the compared test rows beside this run's figures
        (gate_champion.json: not this run's own metrics, which its charts show) and the
        per-slice comparison (gate_slices.json) when there are."""
        import pandas as pd
        from mlflow.entities import RunTag

        champion = report.get("champion_before") or {}
        if champion.get("metrics_on_current_test"):
            tags = {**tags, "gate_champion_version": champion["version"]}
            # On the rows they were compared on: the test rows after the champion's training.
            ours = (report.get("comparison") or {}).get("challenger") or \
                report["challenger_metrics"]
            self.client.log_table(run_id, pd.DataFrame(
                [{"metric": k, "this run": ours.get(k), f"champion v{champion['version']}": v}
                 for k, v in champion["metrics_on_current_test"].items()]),
                "gate_champion.json")
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.log_dict(run_id, report, "gate.json")
        if report.get("slices"):
            self.client.log_table(run_id, pd.DataFrame(report["slices"]), "gate_slices.json")

    def last_training_end(self) -> dt.date | None:
        """The last day of the newest registered version's training window (None: none yet).

        Any registered version counts, promoted or not: it is when training last ran."""
        versions = self.versions()
        return window_end(versions[-1]) if versions else None

    def versions(self) -> list[Any]:
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(found, key=lambda v: int(v.version))

    def aliases(self) -> dict[str, list[str]]:
        by_version: dict[str, list[str]] = {}
        for alias, version in self.client.get_registered_model(self.name).aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        return by_version

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return self.client.get_run(run_id).data.metrics

    def lineage(self, version: str) -> dict[str, Any]:
        mv = self.client.get_model_version(self.name, version)
        metrics = self.run_metrics(mv.run_id) if mv.run_id else {}
        return {
            "model": self.name,
            "version": str(mv.version),
            "aliases": self.aliases().get(str(mv.version), []),
            "created": _time(mv.creation_timestamp),
            "source": mv.source,
            **{key: mv.tags.get(key, "") for key in LINEAGE_TAGS},
            "run_id": mv.run_id,
            "metrics": {k: metrics[k] for k in self.params.task.key_metrics if k in metrics},
            "promotions": [vars(p) for p in self.history()
                           if version in (p.from_version, p.to_version)],
        }


def _time(millis: int) -> str:
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat(timespec="seconds")


def _print_history(history: list[Promotion]) -> None:
    print("promotion history (champion changes, rejected and superseded challengers, oldest "
          "first):")
    if not history:
        print("  (none)")
    for p in history:
        source = f"v{p.from_version}" if p.from_version else "-"
        change = (f"v{p.to_version} {p.status}, champion stays {source}"
                  if p.status in (REJECTED, SUPERSEDED) else f"{source} -> v{p.to_version}")
        print(f"  {p.time}  {change}  {p.reason}" + (f" by {p.by}" if p.by else "")
              + (f"  ({p.note})" if p.note else ""))


def ui_urls(registry: Registry, base: str) -> dict[str, str]:
    """Direct links into the MLflow UI: its home page is an overview without runs, where a
    new user concludes nothing was tracked."""
    params = registry.params
    urls = {}
    # MLflow 3's UI opens on its GenAI view (traces, prompts) unless the link names the
    # model-training one.
    view = "workflowType=machine_learning"
    experiment = registry.client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is not None:
        runs = f"{base}/#/experiments/{experiment.experiment_id}/runs"
        # The key metrics, params and gate verdict as columns, the key metrics' charts first,
        # where the experiment carries that view (tracking.experiment_tags).
        saved = (f"viewStateShareKey={tracking.RUNS_VIEW_KEY}&"
                 if tracking.RUNS_VIEW_TAG in experiment.tags else "")
        urls["runs"] = f"{runs}?{saved}{view}"
        urls["metric charts"] = f"{runs}?compareRunsMode=CHART&{saved}{view}"  # every metric
    urls["registered model"] = f"{base}/#/models/{registry.name}?{view}"
    return urls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlpipeline.registry",
                                     description="Inspect and steer the model registry.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="versions, aliases, key metrics, gate result, history")
    lineage = sub.add_parser("lineage", help="where a version came from")
    lineage.add_argument("version")
    history = sub.add_parser("history", help="champion changes, or the champion at a time")
    history.add_argument("--at", help="ISO time, e.g. 2026-11-22T10:00+00:00")
    rollback = sub.add_parser("rollback", help="champion back to `previous` or --to VERSION")
    rollback.add_argument("--to")
    promote = sub.add_parser("promote", help="make VERSION the champion by hand")
    promote.add_argument("version")
    promote.add_argument("--note", default="")
    for name, what in (("approve", "promotion.mode manual: make the waiting challenger "
                                    "the champion"),
                       ("reject", "promotion.mode manual: turn the waiting challenger down")):
        decision = sub.add_parser(name, help=what)
        decision.add_argument("version")
        decision.add_argument("--note", default="", help="why (goes to the history)")
    card = sub.add_parser("card", help="a version's model card (Markdown)")
    card.add_argument("version")
    urls = sub.add_parser("urls", help="where the MLflow UI shows the runs and the model")
    urls.add_argument("--base", default="http://127.0.0.1:5000", help="the UI's address")
    args = parser.parse_args(argv)

    registry = Registry(load_params())
    try:
        run_command(registry, args)
    except tracking.mlflow.exceptions.MlflowException as error:  # e.g. no such version
        raise SystemExit(f"registry: {error.message} (`make models` lists the versions)"
                         ) from None


def run_command(registry: Registry, args: argparse.Namespace) -> None:
    if args.command == "urls":
        for what, url in ui_urls(registry, args.base.rstrip("/")).items():
            print(f"  {what + ':':<18}{url}")
        return
    if args.command == "list":
        aliases = registry.aliases()
        key_metrics = registry.params.task.key_metrics
        header = f"{'version':>7}  {'aliases':<28}  " + "  ".join(f"{m:>11}" for m in key_metrics)
        print(f"{registry.name}:\n{header}  gate")
        for mv in registry.versions():
            metrics = registry.run_metrics(mv.run_id) if mv.run_id else {}
            figures = "  ".join(f"{metrics.get(m, float('nan')):>11.4f}" for m in key_metrics)
            names = ",".join(sorted(aliases.get(str(mv.version), []))) or "-"
            gate = mv.tags.get("gate", "-") + (f", {mv.tags['approval']}"
                                               if mv.tags.get("approval") else "")
            print(f"{mv.version:>7}  {names:<28}  {figures}  {gate}")
        _print_history(registry.decisions())
    elif args.command == "lineage":
        print(json.dumps(registry.lineage(args.version), indent=2))
    elif args.command == "history":
        if args.at:
            events = registry.history()
            when = dt.datetime.fromisoformat(args.at)
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            version = champion_at(events, when)
            print(f"champion at {when.isoformat()}: " + (f"v{version}" if version else "none"))
        else:
            _print_history(registry.decisions())
    elif args.command == "rollback":
        event = registry.rollback(args.to)
        print(f"registry: champion v{event.from_version} -> v{event.to_version} (rollback)")
    elif args.command == "promote":
        event = registry.set_champion(args.version, "manual", args.note)
        print(f"registry: champion v{event.from_version} -> v{event.to_version} (manual)")
    elif args.command == "card":
        print(registry.card(args.version))
    elif args.command == "approve":
        event = registry.approve(args.version, args.note)
        print(f"registry: v{event.to_version} approved by {event.by}; champion "
              f"v{event.from_version} -> v{event.to_version}")
    elif args.command == "reject":
        event = registry.reject(args.version, args.note)
        print(f"registry: v{event.to_version} rejected by {event.by}; champion stays "
              f"v{event.from_version}")


if __name__ == "__main__":
    main()
