"""Constant-velocity Kalman filter on (cx, cy, aspect, height), the motion model of SORT and ByteTrack.

Eight states (x, y, a, h and their velocities); noise scales with the box height so small and
large objects are tracked alike. numpy only, a few 8x8 products per track and frame.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

_STD_POS, _STD_VEL = 1.0 / 20, 1.0 / 160


class KalmanBoxFilter:
    def __init__(self) -> None:
        self.F = np.eye(8)
        self.F[:4, 4:] = np.eye(4)  # x += v * dt, dt = one frame
        self.H = np.eye(4, 8)

    def initiate(self, xyah: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        mean = np.r_[xyah, np.zeros(4)]
        h = xyah[3]
        std = np.array([2 * _STD_POS * h, 2 * _STD_POS * h, 1e-2, 2 * _STD_POS * h,
                        10 * _STD_VEL * h, 10 * _STD_VEL * h, 1e-5, 10 * _STD_VEL * h])
        return mean, np.diag(std ** 2)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        q = np.r_[[_STD_POS * h, _STD_POS * h, 1e-2, _STD_POS * h], [_STD_VEL * h, _STD_VEL * h, 1e-5, _STD_VEL * h]]
        return self.F @ mean, self.F @ cov @ self.F.T + np.diag(q ** 2)

    def update(self, mean: np.ndarray, cov: np.ndarray, xyah: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        h = mean[3]
        r = np.array([_STD_POS * h, _STD_POS * h, 1e-1, _STD_POS * h]) ** 2
        s = self.H @ cov @ self.H.T + np.diag(r)
        gain = np.linalg.solve(s, self.H @ cov).T  # cov H^T S^-1 (S symmetric)
        mean = mean + gain @ (xyah - self.H @ mean)
        cov = cov - gain @ s @ gain.T
        return mean, cov


def xyxy_to_xyah(b: np.ndarray) -> np.ndarray:
    w, h = b[2] - b[0], max(b[3] - b[1], 1e-6)
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, w / h, h], np.float64)


def xyah_to_xyxy(m: np.ndarray) -> np.ndarray:
    w = m[2] * m[3]
    return np.array([m[0] - w / 2, m[1] - m[3] / 2, m[0] + w / 2, m[1] + m[3] / 2], np.float32)
