"""What ``tune`` returns and writes: the choice, why, and the pipeline file to deploy it.

:class:`TuneReport` holds every configuration's dev NDCG@10 and predicted latency, the Pareto
frontier, the first stage's recall and oracle NDCG per depth, the choice with its test NDCG@10,
interval and paired tests, and the measured latency of the choice and its rivals. :meth:`write`
puts ``pipeline.toml`` (the choice as a pipeline spec), ``report.md``, ``frontier.png`` and the
dev / test query ids into a folder, written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerankers_plugins._optional import require
from rerankers_plugins.errors import ConfigError
from rerankers_plugins.eval.stats import PairedTest
from rerankers_plugins.spec import Spec, dumps_pipeline_file

__all__ = ["Choice", "ConfigResult", "DepthRow", "Measured", "TuneReport"]

#: the files a tune folder holds (a folder holding exactly these may be replaced by a new run)
OUTPUTS = ("pipeline.toml", "report.md", "frontier.png", "dev_queries.txt", "test_queries.txt")


@dataclass(frozen=True)
class DepthRow:
    """The first stage at one depth, over the test queries: is it or the reranker the bottleneck?"""

    depth: int
    recall: float  #: Recall@depth: the share of relevant documents a reranker can reach
    ndcg: float  #: NDCG@10 of the first stage's own order
    oracle: float  #: NDCG@10 of the candidates in the perfect order (the best a reranker can do)
    fewer: int  #: queries with fewer candidates than the depth


@dataclass(frozen=True)
class ConfigResult:
    """One configuration, on the dev queries of the final choice."""

    name: str
    kind: str
    depth: int
    spec: Spec
    dev_ndcg: float
    #: NDCG@10 on the test queries: reported, never read to choose
    test_ndcg: float
    predicted_p50_ms: float
    predicted_ms: float  #: at the report's percentile
    fits: bool
    frontier: bool = False


@dataclass(frozen=True)
class Measured:
    """A configuration run for real on test queries: predicted and measured latency on the same queries."""

    name: str
    queries: int
    predicted_p50_ms: float
    predicted_ms: float
    measured_p50_ms: float
    measured_ms: float
    #: queries whose real ranking equals the simulated one (all of them, unless a scorer is not deterministic)
    agree: int

    @property
    def error(self) -> float:
        """Relative error of the predicted percentile against the measured one."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms if self.measured_ms else 0.0


@dataclass(frozen=True)
class Choice:
    """The configuration chosen, and how it does on the test queries."""

    config: ConfigResult
    test_ndcg: float
    test_ci: tuple[float, float]
    test_queries: int
    vs_first_stage: PairedTest
    vs_best: PairedTest
    best_any: str  #: the best dev NDCG@10 regardless of budget
    folds: list[str] = field(default_factory=list)  #: each fold's choice (k-fold only)


@dataclass
class TuneReport:
    dataset: str
    first_stage: str
    #: the candidates asked of the first stage per query (``eval --k`` reproduces the lists)
    first_stage_k: int
    budget_ms: float
    percentile: float
    concurrency: int
    seed: int
    headroom: float
    split: str
    dev_ids: list[str]
    test_ids: list[str]
    depths: list[DepthRow]
    configs: list[ConfigResult]
    first_stage_ndcg: float
    choice: Choice | None
    cheapest: ConfigResult
    scorers: dict[str, Spec]
    cost_models: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: list[Measured] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    # -- reading it -----------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"p{self.percentile:g}"

    @property
    def chosen(self) -> ConfigResult | None:
        return self.choice.config if self.choice else None

    @property
    def frontier(self) -> list[ConfigResult]:
        """The Pareto frontier: no other configuration is both cheaper and better on dev."""
        return sorted((c for c in self.configs if c.frontier), key=lambda c: c.predicted_ms)

    def config(self, name: str) -> ConfigResult:
        for c in self.configs:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def spec(self) -> Spec | None:
        """The chosen pipeline's spec (what ``pipeline.toml`` holds), or None when nothing fits."""
        return self.chosen.spec if self.chosen else None

    def pipeline_file(self) -> str:
        """``pipeline.toml``'s text: the chosen pipeline, its figures in the header."""
        if self.choice is None:
            raise ConfigError(self._nothing_fits())
        c, ch = self.choice.config, self.choice
        measured = next((m for m in self.measured if m.name == c.name), None)
        lines = [
            f"Chosen by rerankers-plugins tune on {self.dataset} ({self.first_stage} first stage):",
            f"  {c.name}: {self.label} <= {self.budget_ms:g} ms budget (concurrency {self.concurrency})",
            f"  predicted {self.label} {c.predicted_ms:.1f} ms"
            + (
                f", measured {measured.measured_ms:.1f} ms on {measured.queries} test queries"
                if measured
                else ""
            ),
            f"  test NDCG@10 {ch.test_ndcg:.3f} [{ch.test_ci[0]:.3f}, {ch.test_ci[1]:.3f}] on {ch.test_queries} queries",
            f"The pipeline reranks the first {c.depth} candidates: let the retriever return at least {c.depth}.",
            "Load it: rerankers_plugins.spec.load_pipeline(path), RerankCompressor.from_spec(path),",
            "RerankPostprocessor.from_spec(path); check it: rerankers-plugins eval DATA --config pipeline.toml",
            f"  --k {self.first_stage_k} --query-ids test_queries.txt",
        ]
        return dumps_pipeline_file({"tuned": c.spec}, default="tuned", header="\n".join(lines))

    def _nothing_fits(self) -> str:
        c = self.cheapest
        return (
            f"nothing fits {self.label} <= {self.budget_ms:g} ms (with {self.headroom:.0%} headroom): the cheapest "
            f"configuration, {c.name}, is predicted at {c.predicted_ms:.1f} ms {self.label}. Raise the budget, "
            "rerank fewer candidates or keep the first stage's order."
        )

    def summary(self) -> str:
        """The choice in a few lines."""
        head = (
            f"{self.dataset}: {len(self.dev_ids)} dev / {len(self.test_ids)} test queries ({self.split}); "
            f"first stage {self.first_stage}; {len(self.configs)} configurations; budget {self.label} <= "
            f"{self.budget_ms:g} ms, {self.concurrency} in flight"
        )
        lines = [head, *(f"warning: {w}" for w in self.warnings)]
        if self.choice is None:
            lines.append(self._nothing_fits())
            return "\n".join(lines)
        ch, c = self.choice, self.choice.config
        lines.append(
            f"chosen: {c.name} (predicted {self.label} {c.predicted_ms:.1f} ms; dev NDCG@10 {c.dev_ndcg:.3f})"
        )
        lines.append(
            f"test NDCG@10 {ch.test_ndcg:.3f} [{ch.test_ci[0]:.3f}, {ch.test_ci[1]:.3f}] on {ch.test_queries} queries"
            + (f" (cross-validated: folds chose {', '.join(ch.folds)})" if ch.folds else "")
        )
        lines.append(f"vs the first stage alone ({self.first_stage_ndcg:.3f}): {ch.vs_first_stage}")
        if ch.vs_first_stage.low <= 0.0:
            lines.append(
                "  (not significantly better than the first stage on the test queries: keeping its order "
                "costs nothing; a larger budget or another scorer may be worth it)"
            )
        lines.append(f"vs the best regardless of budget ({ch.best_any}): {ch.vs_best}")
        for m in self.measured:
            lines.append(
                f"measured {m.name}: {self.label} {m.measured_ms:.1f} ms (predicted {m.predicted_ms:.1f}, "
                f"{m.error:+.0%}) on {m.queries} test queries; rankings as simulated: {m.agree}/{m.queries}"
            )
        return "\n".join(lines)

    def bottleneck(self) -> str:
        """One sentence: is the first stage or the reranker what limits quality at the chosen depth?"""
        if self.choice is None:
            return ""
        row = next(r for r in self.depths if r.depth == self.choice.config.depth)
        gap_rerank = row.oracle - self.choice.test_ndcg
        top = self.depths[-1]
        gap_first = top.oracle - row.oracle
        if gap_first > gap_rerank:
            return (
                f"the first stage limits quality: deeper candidates would raise the best possible NDCG@10 from "
                f"{row.oracle:.3f} (depth {row.depth}) to {top.oracle:.3f} (depth {top.depth})"
            )
        return (
            f"the reranker limits quality: at depth {row.depth} a perfect order would reach NDCG@10 "
            f"{row.oracle:.3f}, the choice reaches {self.choice.test_ndcg:.3f}"
        )

    def depth_table(self) -> str:
        lines = [
            "| depth | recall@depth | first stage NDCG@10 | oracle NDCG@10 | queries with fewer candidates |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r.depth} | {r.recall:.3f} | {r.ndcg:.3f} | {r.oracle:.3f} | {r.fewer} |" for r in self.depths
        ]
        return "\n".join(lines)

    def frontier_table(self) -> str:
        """The Pareto frontier as a markdown table (the choice marked)."""
        chosen = self.chosen.name if self.chosen else None
        lines = [
            f"| configuration | dev NDCG@10 | predicted p50 ms | predicted {self.label} ms | fits |",
            "|---|---:|---:|---:|:---:|",
        ]
        for c in self.frontier:
            mark = " **(chosen)**" if c.name == chosen else ""
            lines.append(
                f"| {c.name}{mark} | {c.dev_ndcg:.3f} | {c.predicted_p50_ms:.1f} | {c.predicted_ms:.1f} | "
                f"{'yes' if c.fits else 'no'} |"
            )
        return "\n".join(lines)

    def measured_table(self) -> str:
        lines = [
            f"| configuration | test queries | predicted {self.label} ms | measured {self.label} ms | error | "
            "measured p50 ms | rankings as simulated |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m.name} | {m.queries} | {m.predicted_ms:.1f} | {m.measured_ms:.1f} | {m.error:+.1%} | "
            f"{m.measured_p50_ms:.1f} | {m.agree}/{m.queries} |"
            for m in self.measured
        ]
        return "\n".join(lines)

    def table(self) -> str:
        """Every configuration, best dev NDCG@10 first, as a markdown table."""
        lines = [
            f"| configuration | kind | dev NDCG@10 | predicted p50 ms | predicted {self.label} ms | fits |",
            "|---|---|---:|---:|---:|:---:|",
        ]
        for c in sorted(self.configs, key=lambda c: (-c.dev_ndcg, c.predicted_ms, c.name)):
            lines.append(
                f"| {c.name} | {c.kind} | {c.dev_ndcg:.3f} | {c.predicted_p50_ms:.1f} | {c.predicted_ms:.1f} | "
                f"{'yes' if c.fits else 'no'} |"
            )
        return "\n".join(lines)

    def markdown(self) -> str:
        """The whole report (``report.md``)."""
        t = self.timings
        parts = [
            f"# Tuning on {self.dataset}",
            "",
            self.summary(),
            "",
            self.bottleneck(),
            "",
            "## Measured",
            "",
            self.measured_table(),
            "",
            "## Pareto frontier (dev queries)",
            "",
            self.frontier_table(),
            "",
            "## The first stage by depth (test queries)",
            "",
            self.depth_table(),
            "",
            "## Cost models",
            "",
            *(f"- {name}: {text}" for name, text in self.cost_models.items()),
            "",
            "## Time spent",
            "",
            f"scoring {t.get('scoring_s', 0.0):.1f} s (each scorer once at the largest depth: "
            f"{t.get('baseline_s', 0.0):.1f} s), timing {t.get('calibrate_s', 0.0):.1f} s, simulating "
            f"{t.get('simulate_s', 0.0):.1f} s, real runs {t.get('real_s', 0.0):.1f} s; total {t.get('total_s', 0.0):.1f} s",
            *(f"\nnote: {n}" for n in self.notes),
            "",
            "## Every configuration (dev queries)",
            "",
            self.table(),
            "",
        ]
        return "\n".join(parts)

    def plot(self, path: str | Path) -> Path:
        """Dev NDCG@10 against predicted latency: every configuration, the frontier, the budget line
        and the choice (PNG)."""
        matplotlib = require("matplotlib", "eval")
        matplotlib.use("Agg")
        plt = require("matplotlib.pyplot", "eval")
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        xs = [max(c.predicted_ms, 0.01) for c in self.configs]
        ax.scatter(
            xs, [c.dev_ndcg for c in self.configs], s=10, alpha=0.35, color="grey", label="configurations"
        )
        front = self.frontier
        ax.plot(
            [max(c.predicted_ms, 0.01) for c in front],
            [c.dev_ndcg for c in front],
            "-o",
            ms=4,
            label="frontier",
        )
        ax.axvline(self.budget_ms, color="red", ls="--", lw=1, label=f"budget {self.budget_ms:g} ms")
        ax.axhline(self.first_stage_ndcg, color="black", ls=":", lw=1, label="first stage alone")
        if self.chosen is not None:
            c = self.chosen
            ax.scatter(
                [max(c.predicted_ms, 0.01)],
                [c.dev_ndcg],
                s=90,
                marker="*",
                color="red",
                zorder=5,
                label=c.name,
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"predicted {self.label} rerank latency per query (ms, log scale)")
        ax.set_ylabel("dev NDCG@10")
        ax.set_title(f"{self.dataset}: {len(self.configs)} configurations, {self.first_stage} first stage")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    def write(self, directory: str | Path) -> Path:
        """Write the report folder (see the module docstring), all or nothing: built under a
        temporary name beside ``directory`` and renamed. A folder that exists is replaced only if it
        holds nothing but an earlier tune's files."""
        out = Path(directory)
        if out.exists() and (not out.is_dir() or any(p.name not in OUTPUTS for p in out.iterdir())):
            raise ConfigError(f"{out} exists and is not a tune report folder: choose another --out")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            (tmp / "report.md").write_text(self.markdown(), encoding="utf-8")
            (tmp / "dev_queries.txt").write_text("".join(f"{q}\n" for q in self.dev_ids), encoding="utf-8")
            (tmp / "test_queries.txt").write_text("".join(f"{q}\n" for q in self.test_ids), encoding="utf-8")
            if self.choice is not None:
                (tmp / "pipeline.toml").write_text(self.pipeline_file(), encoding="utf-8")
            self.plot(tmp / "frontier.png")
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                out.rename(old)
                tmp.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def as_dict(self) -> dict[str, Any]:
        """The choice and its figures as plain data."""
        return {
            "chosen": self.chosen.name if self.chosen else None,
            "spec": self.spec,
            "budget_ms": self.budget_ms,
            "percentile": self.percentile,
            "test_ndcg": self.choice.test_ndcg if self.choice else None,
            "test_ci": list(self.choice.test_ci) if self.choice else None,
            "measured": [m.__dict__ for m in self.measured],
            "timings": dict(self.timings),
        }
