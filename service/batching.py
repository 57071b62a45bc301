"""Requests arriving together are scored together: the first waits at most ``max_wait_ms`` for others, up
to ``max_batch`` images per model call, on one model thread (the event loop never computes). Each image
is scored on its own, so its score does not depend on its batch. At most ``max_queue`` requests are
admitted at once (waiting or being scored); the next is refused at once (``Overloaded``: 503), so a
burst never grows a backlog."""
import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
from PIL import Image

from custom_models.detector import Prediction, Thresholds
from service.models import ModelHolder, ModelVersion


class Overloaded(Exception):
    pass


@dataclass
class Job:
    image: Image.Image
    tensor: torch.Tensor
    sensitivity: Optional[float]       # this request's, or None: the service's thresholds
    source: str
    future: asyncio.Future
    prepared_for: Optional[ModelVersion] = None  # the version whose input transform made ``tensor``
    queued_at: float = field(default_factory=time.perf_counter)
    thresholds: Optional[Thresholds] = None  # the ones it was decided with (set when scored)


@dataclass
class Scored:
    prediction: Prediction
    version: ModelVersion
    batch_size: int
    queue_ms: float
    model_ms: float
    thresholds: Thresholds    # the ones it was decided with


class Batcher:
    def __init__(self, holder: ModelHolder, max_batch: int, max_wait_ms: float, max_queue: int,
                 on_batch: Callable[[ModelVersion, List[Job], List[Prediction]], None] = None):
        self.holder, self.max_batch, self.max_wait, self.max_queue = holder, max_batch, max_wait_ms / 1000, max_queue
        self.on_batch = on_batch
        self.queue: asyncio.Queue = None
        self.admitted = 0
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix='model')
        self.worker = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.model_thread.shutdown(wait=True)

    def admit(self) -> None:
        """Count one request in, or refuse it (called on the event loop, so no lock is needed)."""
        if self.admitted >= self.max_queue:
            raise Overloaded()
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1

    async def score(self, image: Image.Image, tensor: torch.Tensor, sensitivity: Optional[float],
                    source: str, prepared_for: Optional[ModelVersion] = None) -> Scored:
        job = Job(image, tensor, sensitivity, source, asyncio.get_running_loop().create_future(), prepared_for)
        self.queue.put_nowait(job)
        return await job.future

    async def next_batch(self) -> List[Job]:
        batch = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                left = deadline - time.perf_counter()
                batch.append(self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left))
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
        return batch

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.next_batch()
            version = self.holder.current  # taken once: a reload meanwhile affects the next batch only
            started = time.perf_counter()
            try:
                predictions = await loop.run_in_executor(self.model_thread, self.predict, version, batch)
            except Exception as exc:  # a model fault: every request of the batch gets it (a 500, logged)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            model_ms = 1000 * (time.perf_counter() - started)
            for job, prediction in zip(batch, predictions):
                if not job.future.done():  # the client may have gone
                    job.future.set_result(Scored(prediction, version, len(batch),
                                                 1000 * (started - job.queued_at), model_ms, job.thresholds))

    def predict(self, version: ModelVersion, batch: List[Job]) -> List[Prediction]:
        """On the model thread: one model call for the batch, then each image's decision and mask at its own
        size (at its request's thresholds); ``on_batch`` records them."""
        detector = version.detector
        tensors = [job.tensor if job.prepared_for is version else detector.model_input(job.image)  # reloaded since
                   for job in batch]
        maps, scores = detector.score_images(detector.collate(tensors))
        for job in batch:
            t = detector.thresholds
            job.thresholds = t if job.sensitivity is None else t.with_sensitivity(job.sensitivity)
        predictions = [detector.result(maps[i], scores[i], job.image.size, job.thresholds)
                       for i, job in enumerate(batch)]
        if self.on_batch is not None:
            self.on_batch(version, batch, predictions)
        return predictions
