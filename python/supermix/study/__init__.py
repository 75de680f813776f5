"""The Fashion-MNIST distillation study as a library: its statistics (:mod:`.stats`), the
measures of a mixed set (:mod:`.measures`), the designs (:mod:`.design`), the runner
(:mod:`.runner`) and the report (:mod:`.report`); ``scripts/replicate_fmnist.py`` parses its
flags and composes them.

A paired design trains every method once per seed with the seed's own draws; the difference
between two methods is taken seed by seed, which removes what the seed does to both (the
student's initialisation, the batch order), so its interval is far narrower than the two
methods' intervals side by side.
"""
from .design import (KD_MIXED_PROTOCOL, PAPER_PROTOCOL, PROTOCOLS, Method, Protocol, SetKind,
                     Settings, generate_command, run_path, set_path, training_command)
from .measures import SET_MEASURES, mixed_set_statistics
from .report import Contrast, contrast_rows, preregistered_verdict, write_report
from .runner import Job, Results, collect, end_record, execute_all, plan
from .stats import (Interval, holm, mean_interval, paired_difference, paired_p_value,
                    spearman_rho, t_quantile_975, t_two_sided_p)

__all__ = [
    "t_quantile_975", "t_two_sided_p", "holm", "spearman_rho", "Interval", "mean_interval",
    "paired_difference", "paired_p_value", "SET_MEASURES", "mixed_set_statistics",
    "Settings", "SetKind", "Method", "Protocol", "PAPER_PROTOCOL", "KD_MIXED_PROTOCOL",
    "PROTOCOLS", "set_path", "run_path", "generate_command", "training_command",
    "Job", "plan", "execute_all", "Results", "collect", "end_record",
    "Contrast", "contrast_rows", "preregistered_verdict", "write_report",
]
