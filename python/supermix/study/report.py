"""The study's report: per-method means and intervals, the paired contrasts with Holm's
correction, the reading rule applied, the set measures and the drift check, the reruns, the
commands, and the figure."""
from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .design import PAPER_PROTOCOL, Method, Protocol, Settings
from .measures import SET_MEASURES
from .runner import Results
from .stats import (Interval, holm, mean_interval, paired_difference, paired_p_value,
                    spearman_rho, t_quantile_975)

__all__ = ["Contrast", "contrast_rows", "preregistered_verdict", "write_report"]


def _pts(iv: Interval, signed: bool = False) -> str:
    return iv.text(100.0, 2, signed)


def _verdict(iv: Interval) -> str:
    if iv.n < 2:
        return "one seed"
    if not iv.excludes_zero:
        return "not resolved (CI contains 0)"
    return "a gain" if iv.mean > 0 else "a loss"


@dataclass
class Contrast:
    """One paired row: ``a - b`` over the seeds both finished, its t-test and Holm's p."""

    title: str
    why: str
    interval: Interval
    diffs: dict[int, float]
    p: float
    holm_p: float = math.nan

    @property
    def verdict(self) -> str:
        return _verdict(self.interval)


def contrast_rows(proto: Protocol, res: Results) -> tuple[list[Contrast], list[Contrast]]:
    """The main and the ablation rows; Holm's correction over all of them (one family)."""
    groups = []
    for contrasts in (proto.main_contrasts, proto.ablation_contrasts):
        rows = []
        for a, b, why in contrasts:
            if a in res.top1 and b in res.top1 and set(res.top1[a]) & set(res.top1[b]):
                iv, diffs = paired_difference(res.top1[a], res.top1[b])
                rows.append(Contrast(f"{proto.method(a).title} − {proto.method(b).title}", why,
                                     iv, diffs, paired_p_value(diffs)))
        groups.append(rows)
    family = [row for rows in groups for row in rows if not math.isnan(row.p)]
    for row, adjusted in zip(family, holm([row.p for row in family])):
        row.holm_p = adjusted
    return groups[0], groups[1]


def preregistered_verdict(iv: Interval) -> str:
    """The paper protocol's reading rule (PAPER_PROTOCOL.reading_rule), applied."""
    if iv.n < 2:
        return "one seed: no verdict"
    if iv.low > 0:
        return "supported (the interval lies above 0)"
    if iv.high < 0.003:
        return "refuted under its own protocol (the interval lies below +0.3 points)"
    return "inconclusive (the interval reaches both 0 and +0.3 points)"


def _p(value: float) -> str:
    return "" if math.isnan(value) else (f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}")


def _contrast_table(rows: list[Contrast]) -> list[str]:
    L = ["| difference | question | mean ± 95% CI (points) | verdict | p (paired t) | Holm p | "
         "survives Holm at 5% | per seed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{100 * r.diffs[k]:+.2f}" for k in sorted(r.diffs))
        survives = "" if math.isnan(r.holm_p) else ("yes" if r.holm_p < 0.05 else "no")
        L.append(f"| {r.title} | {r.why} | {_pts(r.interval, True)} | {r.verdict} | {_p(r.p)} "
                 f"| {_p(r.holm_p)} | {survives} | {per_seed} |")
    return L


def _method_table(methods: list[Method], res: Results, minutes: bool) -> list[str]:
    L = ["| method | seeds | test top-1 % (mean ± 95% CI) | per seed |"
         + (" minutes / run |" if minutes else ""), "|---|---|---|---|" + ("---|" if minutes
                                                                          else "")]
    for m in methods:
        values = res.top1[m.key]
        per_seed = ", ".join(f"{100 * values[k]:.2f}" for k in sorted(values))
        row = f"| {m.title} | {len(values)} | {_pts(mean_interval(list(values.values())))} | " \
              f"{per_seed} |"
        if minutes:
            row += f" {sum(res.minutes[m.key]) / len(res.minutes[m.key]):.1f} |"
        L.append(row)
    return L


def _drift_section(proto: Protocol, res: Results, main_rows: list[Contrast]) -> list[str]:
    """Does anything depend on the seed's value? The question's paired difference and the
    sets' measures against the seed number (Spearman), and each seed's set measures."""
    if not main_rows or main_rows[0].interval.n < 3:
        return []
    first = main_rows[0]
    seeds = sorted(first.diffs)
    L = ["## Seeds", "",
         f"Spearman's rho of {first.title} against the seed number: "
         f"{spearman_rho(seeds, [first.diffs[k] for k in seeds]):+.2f} over {len(seeds)} seeds "
         "(the earlier protocol's SuperMix − CutMix had −0.77 over 15; seeds should be "
         "interchangeable). Each seed's sets, the question's two:", "",
         "| seed | set | criterion met | mean iterations | at 0 iterations | mask sparsity term | "
         "KL(target ‖ teacher) |", "|---|---|---|---|---|---|---|"]
    a, b = proto.main_contrasts[0][:2]
    keys = [k for k in (proto.method(a).set_key, proto.method(b).set_key) if k in res.sets]
    for seed in seeds:
        for key in keys:
            m = res.sets[key].get(seed)
            if m is not None:
                L.append(f"| {seed} | {proto.kind(key).title} | {100 * m['success']:.1f}% | "
                         f"{m['mean_iters']:.2f} | {100 * m['zero_iters']:.1f}% | "
                         f"{m['mask_sparsity']:.3f} | {m['kl_to_target']:.3f} |")
    for key in keys:
        per = res.sets[key]
        ks = sorted(k for k in per if k in first.diffs)
        # Blind sets take no solver steps: their iteration measures are constant.
        if len(ks) >= 3 and len({per[k]["mean_iters"] for k in ks}) > 1:
            L.append("")
            L.append(f"{proto.kind(key).title}: rho of mean iterations against the seed "
                     f"{spearman_rho(ks, [per[k]['mean_iters'] for k in ks]):+.2f}, of the "
                     f"mask sparsity term "
                     f"{spearman_rho(ks, [per[k]['mask_sparsity'] for k in ks]):+.2f}, of the "
                     f"question's difference against this set's mean iterations "
                     f"{spearman_rho([per[k]['mean_iters'] for k in ks], [first.diffs[k] for k in ks]):+.2f}.")
    return L + [""]


def _rerun_section(res: Results) -> list[str]:
    if not res.rerun_top1 and not res.rerun_sets:
        return []
    L = ["## Determinism", "",
         "The first seeds' sets and runs made again from nothing with the same commands (in "
         "`rerun/` of the work folder) on the same machine:", ""]
    for key, per in sorted(res.rerun_sets.items()):
        for seed, same in sorted(per.items()):
            L.append(f"- set {key}, seed {seed}: shards {'identical (sha256)' if same else 'DIFFER'}")
    for key, per in sorted(res.rerun_top1.items()):
        for seed, value in sorted(per.items()):
            first = res.top1.get(key, {}).get(seed)
            same = first is not None and first == value
            L.append(f"- run {key}, seed {seed}: test top-1 {100 * value:.2f}% "
                     f"({'identical' if same else f'first run {100 * first:.2f}%' if first is not None else 'no first run'})")
    return L + [""]


def _intro(proto: Protocol, s: Settings, teacher: dict, quick: bool, interim: bool) -> list[str]:
    """The title and the paragraph that says what ran."""
    flag = "" if proto is PAPER_PROTOCOL else f" --protocol {proto.key}"
    L = [f"# Does SuperMix beat blind mixing? Fashion-MNIST distillation study, {proto.title}"
         + (" (--quick pipeline run)" if quick else " (interim)" if interim else ""), ""]
    L += ["Produced by `python scripts/replicate_fmnist.py" + flag + (" --quick" if quick else "")
          + "` (the commands are listed under Commands). The paper's distillation study (sec. "
          f"4.2, Tables 2-3) scaled to a 2-core CPU: the shipped ResNet-20 teacher "
          f"({teacher['text']} test top-1, trained on all 60000 training images) distilled into "
          f"a {s.student} student that sees only the first {s.labelled} labelled training "
          f"images; mixed sets of {s.mixed_size} images (kappa = {s.kappa:g}) mixed from those "
          "images only (k = 2, alpha = 3), labelled by the teacher. Paired design: seed s draws "
          "its own mixed sets, student initialisation, batch order and augmentation, and every "
          "method sees seed s's draws; the labelled subset is the same for all seeds. Test "
          f"top-1 on {'the first ' + str(s.limit_test) if s.limit_test else 'all 10000'} test "
          "images after the last epoch. Intervals are 95% t intervals over seeds (mean ± "
          "half-width). " + proto.objective, ""]
    return L


def _sets_section(proto: Protocol, res: Results) -> list[str]:
    """The measures of each kind of mixed set, mean over its seeds."""
    L = ["## Mixed sets", "",
          "Per kind of set, mean over its seeds. Accuracy: the KD + set run.", ""]
    head = ["set", "seeds", "KD + set top-1 %", "criterion met", "mean iterations"]
    head += [title for _, title, _ in SET_MEASURES] + ["minutes / set"]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in proto.set_kinds:
        per_seed = res.sets.get(kind.key)
        if not per_seed:
            continue
        def avg(key):  # noqa: E306
            return sum(v[key] for v in per_seed.values()) / len(per_seed)
        method = next((m for m in proto.methods
                       if m.set_key == kind.key and m.command == "distill"), None)
        acc = (_pts(mean_interval(list(res.top1[method.key].values())))
               if method and method.key in res.top1 else "")
        row = [kind.title, str(len(per_seed)), acc, f"{100 * avg('success'):.1f}%",
               f"{avg('mean_iters'):.2f}", f"{100 * avg('zero_iters'):.1f}%",
               f"{avg('mask_sparsity'):.3f}", f"{avg('kl_to_target'):.3f}",
               f"{avg('top5_entropy'):.3f}", f"{avg('minutes'):.1f}"]
        L.append("| " + " | ".join(row) + " |")
    L += [""] + [f"- {title}: {how}." for _, title, how in SET_MEASURES]
    L += ["- criterion met: the fraction of drawn samples that met the termination criterion "
          "(the teacher's top k classes are the k sources' classes); MixUp and CutMix only "
          "record it, SuperMix drops the samples that miss it and draws more, so its measures "
          "are over successful samples only.", ""]
    return L


def _setup_section(proto: Protocol, s: Settings, commands: list[str],
                   total_min: float | None, quick: bool) -> list[str]:
    """The machine, the seeds, the training settings and every command."""
    return ["## Setup", "",
          f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {s.jobs} commands at a "
          f"time with 1 thread each; torch {torch.__version__}; "
          f"{time.strftime('%Y-%m-%d')} (report written).",
          (f"- Wall time of the study: {total_min:.0f} min." if total_min else
           "- Wall time: see the minutes per run and per set."),
          f"- Seeds: {', '.join(str(v) for v in s.seeds)}; the other arms on the first "
          f"{s.ablation_seeds}; reruns of the first {s.rerun_seeds}.",
          f"- Every run does {s.epochs} epochs of the labelled images at batch {s.batch_size} "
          "(with a mixed set, distill's epochs scale by 1/kappa and each step also takes a "
          "batch of mixed images; train's epochs are over the union, scaled to the same step "
          "count). SGD momentum 0.9, weight decay 5e-4, lr 0.1 decayed by 0.1 at 1/3, 1/2, 2/3 "
          "and 5/6 of the run (the paper's 200/300/400/500 of 600).",
          "- " + proto.objective, "", "## Commands", "",
          "Run from the repository root (`supermix` is the installed command); the sets, then "
          "the runs.", "", "```", *commands, "```", "",
          "![study](replication.png)" if not quick else "", ""]


def write_report(path: Path, plot: Path, proto: Protocol, s: Settings, res: Results,
                 teacher: dict, commands: list[str], total_min: float | None, quick: bool,
                 notes: str | None = None, appendix: str | None = None) -> None:
    main = [m for m in proto.main if m.key in res.top1]
    main_rows, abl_rows = contrast_rows(proto, res)
    interim = (not quick and bool(main_rows)
               and main_rows[0].interval.n < len(proto.full["seeds"]))
    L = _intro(proto, s, teacher, quick, interim)
    if proto.reading_rule:
        L += ["## The reading, fixed before the run", "", proto.reading_rule, ""]
    L += ["## Answer", ""]
    for r in main_rows[:3]:
        rule = ""
        if proto.reading_rule and r is main_rows[0]:
            rule = (f" Interim ({r.interval.n} of the {len(proto.full['seeds'])} planned seeds): "
                    "the rule above is applied to the whole study only, so this carries no "
                    "verdict." if interim else
                    f" Verdict by the rule above: {preregistered_verdict(r.interval)}.")
        L.append(f"- {r.title}: {_pts(r.interval, True)} points over {r.interval.n} paired "
                 f"seeds (CI {100 * r.interval.low:+.2f} to {100 * r.interval.high:+.2f}; "
                 f"Holm p {_p(r.holm_p)}): {r.verdict}.{rule}")
    if notes:
        L += ["", notes.strip()]
    L += ["", "## Main table", "", *_method_table(main, res, True), "",
          "## Paired differences", "",
          "Difference of test top-1 in points, seed by seed; mean ± 95% CI over the seeds both "
          "methods finished; p from the paired t-test, Holm's correction over every paired row "
          "of this report (main and other arms).", "", *_contrast_table(main_rows)]
    if proto.design_note and not quick:
        L += ["", proto.design_note]
    sd = _paired_sd(main_rows)
    if sd is not None:
        L += ["", f"Noise: the pooled standard deviation of these paired differences is "
              f"{100 * sd:.2f} points, so with {main_rows[0].interval.n} seeds a 95% interval "
              f"has a half-width of about {100 * _half_width(sd, main_rows[0].interval.n):.2f} "
              "points."]
    extra = [m for m in proto.methods if m.ablation and m.key in res.top1]
    if extra:
        L += ["", "## Other arms" if proto is PAPER_PROTOCOL else "## Ablations", "",
              proto.ablation_heading.format(n=s.ablation_seeds), "",
              *_method_table(extra, res, True), "", *_contrast_table(abl_rows)]
    L += [""] + _drift_section(proto, res, main_rows)
    L += _sets_section(proto, res)
    L += _rerun_section(res)
    L += _setup_section(proto, s, commands, total_min, quick)
    if appendix:
        L += [appendix.strip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(L))
    os.replace(tmp, path)
    _plot(plot, proto, s, res, main_rows, abl_rows)


def _paired_sd(rows) -> float | None:
    """Pooled standard deviation of the paired differences of ``rows`` (each row's sample
    variance weighted by its degrees of freedom)."""
    num = den = 0.0
    for row in rows:
        values = list(row.diffs.values())
        if len(values) > 1:
            mean = sum(values) / len(values)
            num += sum((v - mean) ** 2 for v in values)
            den += len(values) - 1
    return math.sqrt(num / den) if den else None


def _half_width(sd: float, n: int) -> float:
    return t_quantile_975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan


def _plot(path: Path, proto: Protocol, s: Settings, res: Results, main_rows, abl_rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [m for m in proto.methods if m.key in res.top1]
    ivs = [mean_interval(list(res.top1[m.key].values())) for m in main]
    diffs = main_rows + abl_rows
    # One panel above the other, so the long names of the paired rows get the width; the
    # constrained layout keeps the labels and the title inside the figure.
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(10, 0.45 * (len(main) + len(diffs)) + 3.5), layout="constrained",
        gridspec_kw={"height_ratios": [len(main) + 1, len(diffs) + 1]})
    base = max(0, math.floor(min(100 * (iv.low if iv.n > 1 else iv.mean) for iv in ivs) - 1))
    y = list(range(len(main)))[::-1]
    ax1.barh(y, [100 * iv.mean - base for iv in ivs], left=base, color="#9db4d6", height=0.6,
             xerr=[100 * (iv.half if iv.n > 1 else 0) for iv in ivs], capsize=4)
    for yi, iv in zip(y, ivs):
        ax1.text(100 * iv.mean, yi + 0.32, f"{100 * iv.mean:.2f}", ha="center", va="bottom",
                 fontsize=8)
    ax1.set_ylim(-0.6, len(main) - 0.1)
    ax1.set_yticks(y)
    ax1.set_yticklabels([m.title for m in main])
    ax1.set_xlim(left=base)
    ax1.set_xlabel(f"test top-1 % (axis starts at {base}%)")
    ax1.set_title("mean and 95% CI over the seeds of each method", fontsize=10)
    y2 = list(range(len(diffs)))[::-1]
    colours = ["#4c72b0"] * len(main_rows) + ["#dd8452"] * len(abl_rows)
    for yi, row, c in zip(y2, diffs, colours):
        iv = row.interval
        ax2.errorbar(100 * iv.mean, yi, xerr=100 * iv.half if iv.n > 1 else 0, fmt="o",
                     color=c, capsize=4)
        ax2.text(100 * iv.mean, yi + 0.15, f"{100 * iv.mean:+.2f} (n={iv.n})", ha="center",
                 va="bottom", fontsize=8)
    reach = max([100 * (abs(r.interval.mean) + (r.interval.half if r.interval.n > 1 else 0))
                 for r in diffs] + [1.0])
    ax2.set_xlim(-1.6 * reach, 1.6 * reach)
    ax2.set_ylim(-0.6, len(diffs) - 0.2)
    ax2.axvline(0, color="k", linewidth=1)
    ax2.set_yticks(y2)
    ax2.set_yticklabels([row.title for row in diffs], fontsize=8)
    ax2.set_xlabel("paired difference, points (wide intervals clipped)")
    ax2.set_title("paired differences, 95% CI (blue: the question, orange: other rows)",
                  fontsize=10)
    fig.suptitle(f"Fashion-MNIST, {proto.title}:\n{s.student} student, {s.labelled} labelled "
                 f"images, mixed sets of {s.mixed_size}, {s.epochs} epochs", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


