"""Shadow scoring: while the registry tags the challenger awaiting a decision `shadow: true`
(register does under promotion.mode shadow), every request the champion answers is scored
again by it, on a thread of its own, and logged under the same request id with role
`shadow`. The counters are the current shadow version's: a new shadow starts from zero.

The request only puts a reference on a bounded queue, so the answer never waits on the
shadow; when the shadow falls behind by more than the queue holds, requests are counted as
dropped rather than queued without end. The counts go to /metrics too
(`prediction_shadow_{scored,dropped,failed}_total` by shadow version, and
`prediction_shadow_pending`), summed over a replica's workers where GET /model shows one
worker's.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from mlpipeline.prediction_log import SHADOW
from serving.champion import Champion
from serving.metrics import ServiceMetrics
from serving.prediction_log import PredictionLog

log = logging.getLogger("serving.shadow")
_STOP = object()


class ShadowScorer:
    def __init__(self, champion: Champion, prediction_log: PredictionLog,
                 max_pending: int, metrics: ServiceMetrics | None = None) -> None:
        self.champion = champion
        self.prediction_log = prediction_log
        self.metrics = metrics
        self.counted_version: str | None = None  # whose requests the counters hold
        self.scored = self.dropped = self.failed = 0  # requests, this worker's
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def submit(self, columns: dict[str, list[Any]], request_id: str) -> None:
        """On the request path: a reference on the queue, nothing more (no shadow: nothing)."""
        shadow = self.champion.shadow
        if shadow is None:
            return
        self._count_for(shadow.version)
        try:
            self._queue.put_nowait((shadow, columns, request_id))
        except queue.Full:
            self.dropped += 1
            self._count(shadow.version, "dropped")
            return
        if self.metrics:
            self.metrics.shadow_pending.inc()

    def state(self) -> dict[str, Any] | None:
        """What GET /model shows as `shadow` (None: no shadow)."""
        shadow = self.champion.shadow
        if shadow is None:
            return None
        self._count_for(shadow.version)
        return {"version": shadow.version, "since": self.champion.shadow_since,
                "run_id": shadow.run_id, "runtime": shadow.runtime,
                "requests": {"scored": self.scored, "dropped": self.dropped,
                             "failed": self.failed, "pending": self._queue.qsize()}}

    def _count_for(self, version: str) -> None:
        if version != self.counted_version:  # another shadow: its own counters, from zero
            self.counted_version = version
            self.scored = self.dropped = self.failed = 0

    def _count(self, version: str, outcome: str) -> None:
        """One request into /metrics' counter of `outcome` for the shadow `version`."""
        if self.metrics:
            counter = getattr(self.metrics, f"shadow_{outcome}")
            self.metrics.child(counter, version).inc()

    def close(self) -> None:
        """Score what is queued, then stop (a clean shutdown logs every shadow answer)."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            shadow, columns, request_id = item
            if self.metrics:
                self.metrics.shadow_pending.dec()
            try:
                answers = shadow.task.answers(shadow.scores(columns))
                self.prediction_log.append(columns, answers.log, shadow.version, request_id,
                                           role=SHADOW, types=shadow.requests.log_types)
                self._count(shadow.version, "scored")
                if shadow.version == self.counted_version:  # not a predecessor's late answer
                    self.scored += 1
            except Exception as error:  # e.g. a contract the champion's columns do not meet
                self._count(shadow.version, "failed")
                if shadow.version == self.counted_version:
                    self.failed += 1
                if self.failed == 1 or self.failed % 1000 == 0:
                    log.warning("shadow v%s could not score a request (%d so far): %s: %s",
                                shadow.version, self.failed, type(error).__name__, error)
