"""Batches of a memory-mapped pool, read ahead by a background thread.

A pool too large for the device (`data.resident_gb`) is read from its memory map on the host. So that a
step never waits for the disk, the host copy or the transfer, a thread draws the next batches' rows from
the pool's own seeded generator (on the host, where the map is: no device-to-host copy of indices),
gathers them into pinned buffers reused in a ring, and on CUDA copies them to the device on a side
stream; the training stream waits on the copy's event, never the host. Its generator state (as of the
last batch handed out) rides in the checkpoint, so a resumed run reads the same rows."""
import queue
import threading

import numpy as np
import torch

DEPTH = 2  # batches ready ahead of the step


class ReadAhead:
    def __init__(self, pool, draws, depth=DEPTH):
        """pool: collapse.data.store.Pool (not resident); draws: a host collapse.draws.Draws of its own."""
        self.pool, self.draws, self.depth = pool, draws, depth
        self.device = pool.device
        self.cuda = self.device.type == "cuda"
        self.thread, self.n, self.subset, self.host_subset = None, None, None, None
        self.handed_out = draws.get_state()  # the generator's state after the last batch handed out

    # -- the consumer (the training loop) ------------------------------------------------------
    def next(self, n, subset=None):
        """The next batch of n rows (drawn from `subset`, positions in the pool, when given):
        (uint8 crops (n,Hs,Ws,3), keypoints (n,J,3), positions (n,)) on the device."""
        if subset is not self.subset:
            self.use_subset(subset)
        if self.thread is None or n != self.n:
            self._restart(n)
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.thread = None
            raise item
        crops, idx, ready, state = item
        if self.cuda:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)  # the device waits for the copy; the host goes on queueing work
            crops.record_stream(stream)
            idx.record_stream(stream)
        self.handed_out = state
        return crops, self.pool.keypoints[idx], idx

    def use_subset(self, subset):
        """Draw rows from `subset` (positions in the pool, on any device; None: all) from now on. Its host
        copy waits for the device: done once per change of subset (a staged recipe's stage change)."""
        self.stop()
        self.subset, self.host_subset = subset, None if subset is None else subset.cpu()

    def state_dict(self):
        return self.handed_out

    def load_state_dict(self, state):
        self.stop()
        self.handed_out = state

    def stop(self):
        """End the thread and drop what it read ahead (the next `next` starts again from `handed_out`)."""
        if self.thread is None:
            return
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread = None

    # -- the producer (a background thread) ----------------------------------------------------
    def _restart(self, n):
        self.stop()
        self.n = n
        self.draws.set_state(self.handed_out)
        self.queue, self.stopping = queue.Queue(self.depth), threading.Event()
        self.thread = threading.Thread(target=self._fill, name="read-ahead", daemon=True)
        self.thread.start()

    def _fill(self):
        try:
            if self.cuda:
                torch.cuda.set_device(self.device)
                side = torch.cuda.Stream(self.device)
                shape = (self.n, *self.pool.store.crops.shape[1:])
                # ring: depth in the queue, one in use by the step, one being filled
                ring = [(torch.empty(shape, dtype=torch.uint8, pin_memory=True),
                         torch.empty(self.n, dtype=torch.long, pin_memory=True), None) for _ in range(self.depth + 2)]
            slot = 0
            while not self.stopping.is_set():
                idx = self._draw()
                rows = self.pool.rows[idx.numpy()]
                if self.cuda:
                    host, host_idx, copied = ring[slot]
                    if copied is not None:
                        copied.synchronize()  # this thread waits for the slot's last copy, never the step
                    np.take(self.pool.store.crops, rows, axis=0, out=host.numpy())
                    host_idx.copy_(idx)
                    with torch.cuda.stream(side):
                        crops = host.to(self.device, non_blocking=True)
                        idx = host_idx.to(self.device, non_blocking=True)
                        ready = torch.cuda.Event()
                        ready.record(side)
                    ring[slot] = (host, host_idx, ready)
                    slot = (slot + 1) % len(ring)
                else:
                    crops, ready = torch.from_numpy(np.take(self.pool.store.crops, rows, axis=0)), None
                item = (crops, idx, ready, self.draws.get_state())
                while not self.stopping.is_set():
                    try:
                        self.queue.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        pass
        except BaseException as e:  # the consumer raises it at its next batch
            self.queue.put(e)

    def _draw(self):
        if self.host_subset is None:
            return self.draws.integers(0, len(self.pool), self.n)
        return self.host_subset[self.draws.integers(0, len(self.host_subset), self.n)]
