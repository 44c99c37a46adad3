"""Outlier detection in the master (Envoy's ``outlier_detection``, passive health checking).

``detector`` is the sans-IO decision logic (Envoy's DetectorImpl: the consecutive,
success-rate and failure-percentage detectors, ejection and its timing), ``manager``
the master's side: detectors per cluster, worker reports in, interval ticks, epochs
out. Workers record outcomes in ``proxyd.worker.outcomes``.
"""

from proxyd.master.outlier.manager import OutlierDetector

__all__ = ["OutlierDetector"]
