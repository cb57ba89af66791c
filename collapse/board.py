"""TensorBoard, for watching a run live (`train.tensorboard: true` writes RUN/tensorboard/): the loss terms
and learning rate at each log line, AP per net at each evaluation, and at each probe the unlabeled mean
peak response, the collapse index and the pixel-response histogram per net (the distributions the study is
about). The run's parquet files stay the source of truth; this is a view of them as they are written."""
import numpy as np
from torch.utils.tensorboard import SummaryWriter

from .detector import collapse_index, unlabeled_response
from .probes import HIST_EDGES


class Board:
    def __init__(self, folder, step):
        # a resumed run drops the events its last checkpoint had not reached, then continues them
        self.writer = SummaryWriter(folder, purge_step=step if step > 0 else None)

    def scalars(self, step, values):
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def probe(self, step, rows, histograms, nets):
        for net in range(nets):
            _, response = unlabeled_response(rows, net)
            if response:
                self.scalars(step, {f"unlabeled/max_response/net{net}": response[-1],
                                    f"unlabeled/collapse_index/net{net}": collapse_index(response)[0][-1]})
        for (split, net), h in histograms.items():
            # bucket i holds responses in [HIST_EDGES[i], HIST_EDGES[i+1]): its upper limit, the last one finite
            limits = np.append(HIST_EDGES[1:-1], max(h["max"], 1.0))
            self.writer.add_histogram_raw(f"{split}/response/net{net}", h["min"], h["max"], int(h["counts"].sum()),
                                          h["sum"], h["sum_squares"], limits.tolist(), h["counts"].tolist(), step)

    def close(self):
        self.writer.close()
