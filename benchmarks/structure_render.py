"""Tables, goal lines and notes of ``structure_coverage.json``, rendered to ``structure_coverage.md``."""

from __future__ import annotations

import json
from typing import Any

from _common import RESULTS_DIR, _atomic_write, render_document

STEM = "structure_coverage"
JSON_PATH = RESULTS_DIR / f"{STEM}.json"
MD_PATH = RESULTS_DIR / f"{STEM}.md"
GOAL_FRACTION = 0.9
EXACT_RTOL = 1e-4  # max |masked - slim| <= EXACT_RTOL * max(1, max |output|): float32 round-off of reordered sums
SAVE_ATOL = 1e-6
PARAM_MATCH = 0.02  # Torch-Pruning's parameter count must be within 2 % of prunekit's to be compared


def _x(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}x"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _m(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _lat(lat: dict[str, Any] | None, who: str) -> float | None:
    """Speed-up of ``who`` over dense in one latency record."""
    if not lat:
        return None
    s = lat["seconds"]
    return _ratio(s.get("dense"), s.get(who))


def _cut(text: str | None, n: int = 90) -> str:
    text = text or "failed"
    return text if len(text) <= n else text[: n - 1] + "…"


def _tp_label(recipe: str) -> str:
    return {"default": "Torch-Pruning (documented defaults)", "llm": "Torch-Pruning (LLM recipe, use_cache=False)"}[recipe]


def model_rows(models: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for r in models.values():
        macs = f"{r['macs'] / 1e6:,.1f}M"
        rows.append([r["label"], f"`{r['config']}`", r["input"], _m(r["params"]), macs, r["family"], f"{r['wall_s']:.0f}"])
    return rows


def coverage_rows(models: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for rec in models.values():
        lat = rec.get("coverage_latency", {})
        b1, b32 = lat.get("1"), lat.get("32")
        pk = rec.get("prunekit", {})
        tools: list[tuple[str, str, dict[str, Any]]] = [("prunekit", "prunekit", pk)]
        tools += [(_tp_label(k), f"tp_{k}", v) for k, v in rec.get("tp", {}).items()]
        for label, key, r in tools:
            if not r.get("ok"):
                rows.append([rec["label"], label, f"FAIL: {_cut(r.get('error'))}", "—", "—", "—", "—", "—", "—"])
                continue
            res = "ok" + (" (removed nothing)" if r.get("removed_nothing") else "")
            errs = [e for lt in (b1, b32) if lt for k, e in lt.get("errors", {}).items() if k == key]
            if errs:
                res += f"; runs fail: {_cut(errs[0], 60)}"
            rows.append(
                [
                    rec["label"],
                    label,
                    res,
                    f"{_m(rec['params'])} → {_m(r['params'])} ({_x(_ratio(rec['params'], r['params']))})",
                    _x(_ratio(rec["macs"], r.get("macs"))),
                    _x(_lat(b1, key)),
                    _x(_lat(b32, key)),
                    f"{r.get('prune_s', float('nan')):.2f}",
                    " / ".join(f"{lt.get('others_cpu', 0.0):.0%}" for lt in (b1, b32) if lt),
                ]
            )
    return rows


def detail_rows(models: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for rec in models.values():
        pk = rec.get("prunekit", {})
        g = pk.get("groups")
        if g is None:
            rows.append([rec["label"], f"FAIL: {_cut(pk.get('error'))}", "—", "—", "—", "—"])
            continue
        reasons = "; ".join(f"{k} ({v})" for k, v in g["frozen_reasons"].items())
        ex = pk.get("exact", {})
        if "error" in ex:
            exact = f"FAIL: {_cut(ex['error'], 70)}"
        elif ex.get("groups"):
            exact = (
                f"{ex['max_abs_diff']:.1e} (max out {ex['max_abs_out']:.2g}; {ex['groups']} groups, "
                f"{ex['skipped_norm_groups']} with norms skipped)"
            )
        else:
            exact = f"— (all {ex.get('skipped_norm_groups', 0)} pruned groups have a LayerNorm/RMSNorm)"
        sl = pk.get("save_load", {})
        saved = f"FAIL: {_cut(sl['error'], 70)}" if "error" in sl else f"{sl.get('max_abs_diff', float('nan')):.1e}"
        rows.append(
            [
                rec["label"],
                f"{g['prunable']}/{g['groups']} ({g['selected']} selected; units {g['prunable_units']:,}/{g['units']:,})",
                reasons or "—",
                exact,
                saved,
                f"{pk.get('analysis_s', float('nan')):.2f}",
            ]
        )
    return rows


def _speed_goal_batches(family: str) -> tuple[str, ...]:
    return ("1", "32") if family == "conv" else ("32",)


def speed_rows(models: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for rec in models.values():
        for lv in rec.get("speed", []):
            if not lv.get("reachable"):
                why = f"unreachable (max {lv['reduction']:.2f}x at ratio {lv['ratio']:.2f})"
                rows.append([rec["label"], f"{lv['target']}x", why, *["—"] * 8])
                continue
            lat = lv.get("latency", {})
            tp = lv.get("tp") or {}
            pk_par = lv["params"]
            if tp.get("ok"):
                d = tp["params"] / pk_par - 1
                tp_cell = f"r={tp['ratio']:.3f}, {_m(tp['params'])} ({d:+.1%}), MACs {_x(_ratio(rec['macs'], tp.get('macs')))}"
                if tp.get("removed_nothing"):
                    tp_cell += ", removed nothing"
                if tp.get("failed_ratios"):
                    tp_cell += f"; {len(tp['failed_ratios'])} ratios failed ({_cut(tp['failed_ratios'][0], 60)})"
            else:
                tp_cell = f"FAIL: {_cut(tp.get('error'), 60)}" if tp else "not run"
            vs = []
            for b in ("1", "32"):
                s = lat.get(b, {}).get("seconds", {})
                vs.append(_x(_ratio(s.get("tp"), s.get("prunekit"))))
            others = max((lat.get(b, {}).get("others_cpu", 0.0) for b in ("1", "32")), default=0.0)
            rows.append(
                [
                    rec["label"],
                    f"{lv['target']}x",
                    f"r={lv['ratio']:.3f}, {_m(pk_par)}, MACs {_x(lv['reduction'])}",
                    _x(_lat(lat.get("1"), "prunekit")),
                    _x(_lat(lat.get("32"), "prunekit")),
                    _x(GOAL_FRACTION * lv["reduction"]) + f" ({'/'.join('b' + b for b in _speed_goal_batches(rec['family']))})",
                    tp_cell,
                    _x(_lat(lat.get("1"), "tp")),
                    _x(_lat(lat.get("32"), "tp")),
                    " / ".join(vs),
                    f"{others:.0%}",
                ]
            )
    return rows


def model_goals(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed goal and the "never slower than Torch-Pruning" goal of one model (``met`` None: not measurable)."""
    parts, met, n, vs_tp, worst = [], True, 0, [], None
    skipped: list[str] = []
    unreachable = [lv for lv in rec.get("speed", []) if not lv.get("reachable")]
    for lv in rec.get("speed", []):
        if not lv.get("reachable"):
            parts.append(f"{lv['target']}x unreachable (max {lv['reduction']:.2f}x)")
            continue
        lat = lv.get("latency", {})
        for b in _speed_goal_batches(rec["family"]):
            sp = _lat(lat.get(b), "prunekit")
            ok = sp is not None and sp >= GOAL_FRACTION * lv["reduction"]
            met &= ok
            n += 1
            parts.append(f"{lv['reduction']:.2f}x MACs b{b}: {_x(sp)}{'' if ok else ' ✗'}")
        tp = lv.get("tp") or {}
        if not tp.get("ok"):
            skipped.append(f"{lv['target']}x (Torch-Pruning failed)")
            continue
        if abs(tp["params"] / lv["params"] - 1) > PARAM_MATCH:
            why = "removed nothing" if tp.get("removed_nothing") else "closest ratio"
            skipped.append(f"{lv['target']}x (parameters differ by {tp['params'] / lv['params'] - 1:+.1%}, {why})")
            continue
        for b in ("1", "32"):
            sec = lat.get(b, {}).get("seconds", {})
            if "tp" in sec and "prunekit" in sec:
                r = sec["tp"] / sec["prunekit"]
                vs_tp.append(f"{lv['target']}x b{b} {r:.2f}")
                worst = r if worst is None else min(worst, r)
    batches = "batch 1 and 32" if rec["family"] == "conv" else "batch 32"
    out = []
    if n or unreachable:
        out.append(
            {
                "goal": f"{rec['label']}: latency speed-up >= {GOAL_FRACTION} x MAC reduction ({batches}) at every level reached",
                "measured": "; ".join(parts),
                "met": met if n else None,
            }
        )
    if vs_tp or skipped:
        measured = "Torch-Pruning latency / prunekit latency: " + (", ".join(vs_tp) or "none")
        if worst is not None:
            measured += f"; worst {worst:.3f}" + (f" (prunekit {1 / worst - 1:.2%} slower)" if worst < 1 else "")
        if skipped:
            measured += f"; not compared: {', '.join(skipped)}"
        out.append(
            {
                "goal": f"{rec['label']}: prunekit never slower than Torch-Pruning at the same parameter count",
                "measured": measured,
                "met": None if worst is None else worst >= 1.0,
            }
        )
    return out


def goals(models: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for rec in models.values():
        out += model_goals(rec)
    exact_bad = [
        rec["label"]
        for rec in models.values()
        if (ex := rec.get("prunekit", {}).get("exact", {})).get("error")
        or ("max_abs_diff" in ex and ex["max_abs_diff"] > EXACT_RTOL * max(1.0, ex["max_abs_out"]))
    ]
    checked = [rec["label"] for rec in models.values() if rec.get("prunekit", {}).get("exact", {}).get("groups")]
    if checked:
        out.append(
            {
                "goal": f"exactness: structured mask == slim model (max |diff| <= {EXACT_RTOL:g} x max(1, max |out|)) "
                "on every model",
                "measured": f"{len(checked) - len(exact_bad)}/{len(checked)} models pass"
                + (f"; fails: {', '.join(exact_bad)}" if exact_bad else ""),
                "met": not exact_bad,
            }
        )
    saved = {
        rec["label"]: rec.get("prunekit", {}).get("save_load", {}) for rec in models.values() if rec.get("prunekit", {}).get("ok")
    }
    bad = [k for k, v in saved.items() if "error" in v or v.get("max_abs_diff", 1.0) > SAVE_ATOL]
    if saved:
        out.append(
            {
                "goal": "save_slim -> load_slim gives the same outputs on every model",
                "measured": f"{len(saved) - len(bad)}/{len(saved)} models" + (f"; fails: {', '.join(bad)}" if bad else ""),
                "met": not bad,
            }
        )
    return out


def notes(data: dict[str, Any]) -> list[str]:
    meta = data.get("meta", {})
    models = data.get("models", {})
    inputs = "; ".join(f"{r['label']}: {r['input']}" for r in models.values())
    return [
        f"Inputs: {inputs}. Random images, features and token ids; text models use a fixed sequence length. MACs "
        "and MAC reductions are per sample at the batch-1 size. Where batch 32 uses smaller inputs (in brackets), the "
        "full size takes seconds per call on 2 cores; for conv nets the MAC reduction is the same at both sizes, for "
        "ViT (interpolated position embeddings, 50 instead of 197 tokens) the attention share of MACs is smaller.",
        "Same channel ratio for both tools: 0.5 of the units of every prunable group, magnitude L2 "
        "(prunekit `StructuredConfig(ratio, scorer=Magnitude(p=2), types=Linear/Conv/Conv1D/*Embedding/*Experts)`, "
        "uniform, "
        "mean reduction and mean normalisation over members; Torch-Pruning `BasePruner(importance=MagnitudeImportance(p=2), "
        "pruning_ratio=r)`). The classifier / LM head's outputs stay (prunekit freezes the model output; Torch-Pruning "
        "gets it in `ignored_layers`). `nn.MultiheadAttention` is analysed and pruned as its equivalent "
        "`SplitMultiheadAttention` (the dense baseline keeps the original module and its fused kernel); Mixtral's "
        "experts are recorded with their per-expert loop and the slim model keeps `grouped_mm` unless a width is not "
        "a multiple of 16 bytes.",
        "Torch-Pruning recipes: see `benchmarks/structure_tp.py`; each attempt runs in a subprocess with a timeout "
        "(coverage: 180 s per attempt). The speed table uses the LLM recipe for causal LMs and the documented defaults "
        "elsewhere; its ratio is searched (regula falsi on log scales, `prunekit.structure.target.solve_increasing`: "
        "at most 8 prunes, plus up to 6 at ratios where it fails, listed in the table) to prunekit's parameter count "
        "within 2 % (the closest attempt is kept when none lands inside; the table shows the difference). prunekit's "
        "ratio for each MAC reduction is found by `prunekit.structure.importance.plan_for_target` (what `prunekit "
        "shrink --target macs=Nx` runs) on the slim models' MACs (at most 12 plans). Torch-Pruning gives each owner "
        "of a tied weight (OPT's embedding and LM head) its own equal copy; the benchmark ties them again "
        "(`structure_tp.retie_like`, as Hugging Face does on loading with `tie_word_embeddings`) before counting "
        "parameters, so an untied copy does not count twice.",
        "prunekit's time to prune: dependency analysis + scores + plan + surgery (`apply_plan_`, head counts included) "
        "(one run; the analysis alone is in the details table). Torch-Pruning's: `BasePruner(...)` + `step()` + the "
        "head-count fix of its examples. Both exclude copying the model.",
        "Latency: `prunekit.structure.compare.measure_latency` (eval mode, `torch.inference_mode`, models timed "
        "interleaved A, B, C, A, B, C..., each repeat at least one call and at least --min-time, median of --repeats); "
        "speed-up = dense latency / slim latency from the same call of `measure_latency`. "
        f"torch threads {meta.get('threads', '?')}. 'others' CPU' = share of the machine's CPU used by other processes "
        "during the latency measurement (0 % = quiet machine); values above ~10 % mean contention. 'N/A' goals: nothing "
        "to compare (every MAC level unreachable, or Torch-Pruning failed / did not reach prunekit's parameter count).",
        "Speed goal: prunekit's speed-up >= 0.9 x the MAC reduction actually reached (the search's closest ratio); "
        "conv nets at batch 1 and 32, the MLP and transformers at batch 32. 'TP / pk latency' > 1 means prunekit is faster.",
        "Exactness: every removed unit's producer and per-channel follower slices are zeroed (the structured mask "
        "applied) and the outputs compared with the slim model's; groups containing a LayerNorm/RMSNorm are left out "
        "(removing units there changes the statistics they normalise with). Save -> load: `persist.save_slim` then "
        "`persist.load_slim`, outputs compared with the slim model's.",
        f"Versions: torch {meta.get('torch')}, transformers {meta.get('transformers')}, "
        f"torch-pruning {meta.get('torch_pruning')}.",
    ]


def status(models: dict[str, Any]) -> str:
    """How many models each tool slims (a Torch-Pruning run that removes nothing or whose model fails to run at
    batch 32 does not count)."""
    n = len(models)

    def ran(rec: dict[str, Any], key: str) -> bool:
        return key not in rec.get("coverage_latency", {}).get("32", {}).get("errors", {})

    pk = sum(1 for r in models.values() if r.get("prunekit", {}).get("ok") and ran(r, "prunekit"))
    out = [f"prunekit slims {pk}/{n} models"]
    for recipe in ("default", "llm"):
        have = [r for r in models.values() if recipe in r.get("tp", {})]
        if have:
            ok = sum(
                1
                for r in have
                if r["tp"][recipe].get("ok") and not r["tp"][recipe].get("removed_nothing") and ran(r, f"tp_{recipe}")
            )
            out.append(f"{_tp_label(recipe)} {ok}/{len(have)}")
    return "; ".join(out)


def section(data: dict[str, Any]) -> dict[str, Any]:
    models = data.get("models", {})
    runs = data.get("runs", [])
    return {
        "status": status(models),
        "title": "Structured pruning: coverage and speed, prunekit vs Torch-Pruning (issue 5)",
        "meta": data.get("meta", {}),
        "commands": [
            f"{r['command']}   # {r['date']}, {r['wall_s'] / 60:.1f} min, models: {' '.join(r['models'])}" for r in runs
        ],
        "goals": goals(models),
        "tables": [
            {
                "caption": "Models (built from configs with random weights; MACs per sample at batch 1)",
                "columns": ["model", "built as", "input (batch 1, [batch 32])", "parameters", "MACs", "goal family", "bench s"],
                "rows": model_rows(models),
            },
            {
                "caption": "Coverage at channel ratio 0.5 (random weights): result, parameters, MACs, latency speed-up "
                "(dense / slim) at batch 1 and 32, time to prune",
                "columns": [
                    "model",
                    "tool",
                    "result",
                    "parameters",
                    "MAC reduction",
                    "speed-up b1",
                    "speed-up b32",
                    "prune s",
                    "others' CPU b1 / b32",
                ],
                "rows": coverage_rows(models),
            },
            {
                "caption": "prunekit details: groups found, why the others are frozen (number of groups), exactness "
                "and save -> load (max |difference| of outputs)",
                "columns": [
                    "model",
                    "prunable / all groups",
                    "frozen groups: reasons",
                    "exact: max |masked - slim|",
                    "save -> load: max |diff|",
                    "analysis s",
                ],
                "rows": detail_rows(models),
            },
            {
                "caption": "Speed at 1.5x, 2x, 4x MAC reduction: prunekit (uniform ratio searched on the plan's MACs) and "
                "Torch-Pruning at the same parameter count; speed-up = dense / slim latency, same interleaved run",
                "columns": [
                    "model",
                    "target",
                    "prunekit",
                    "pk b1",
                    "pk b32",
                    "goal",
                    "Torch-Pruning",
                    "TP b1",
                    "TP b32",
                    "TP / pk latency b1 / b32",
                    "others' CPU",
                ],
                "rows": speed_rows(models),
            },
        ],
        "notes": notes(data),
    }


def render(sec: dict[str, Any]) -> str:
    return render_document(sec, "`benchmarks/structure_coverage.py`", status="**Coverage at ratio 0.5: {}.**")


def write(data: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    _atomic_write(JSON_PATH, json.dumps(data, indent=2) + "\n")
    _atomic_write(MD_PATH, render(section(data)))
