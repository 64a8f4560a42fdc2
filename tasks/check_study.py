"""check_study: validate the whole study, then write what each DVC stage's key reads.

The first stage of `dvc.yaml`. It depends on `params.yaml` as a file and on the project's
code, so any edit of either runs it: an invalid study (an unknown key at any depth, a bad
value) stops `dvc repro` here, before any other stage runs or loses an output. A valid one
gets, per stage (and per entry of a matrix or foreach stage), a small JSON file under
`artifacts/study/` holding the config slice that step reads and its code identity
(`tasks.code_identity`): the same two parts its Prefect key hashes. Each stage depends on
its own file, so an edit re-runs exactly the stages whose code or config it changes.

`--validate-only` checks the study and writes nothing (what `make run` does first).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kdlib import artifacts
from kdlib.config import MAIN_TEACHER, ConfigError, StudyConfig, load_config
from tasks import aggregate, cache_logits, evaluate, finetune_teacher, prepare_data, train_student, train_teacher
from tasks.code_identity import code_digest

OUT = Path("artifacts/study")


def stage_files(cfg: StudyConfig) -> dict[str, dict[str, Any]]:
    """`<stage>[/<entry>].json` -> {"config": the slice the step reads, "code": its identity}."""

    def entry(config: Any, roots: tuple[str, ...]) -> dict[str, Any]:
        return {"config": config, "code": code_digest(roots)}

    files = {
        "prepare_data.json": entry(cfg.data.model_dump(), prepare_data.code_roots(cfg)),
        "cache_logits.json": entry(cache_logits.config_slice(cfg), cache_logits.CODE_ROOTS),
        "evaluate.json": entry(cfg.evaluation.model_dump(), evaluate.CODE_ROOTS),
        "aggregate.json": entry(aggregate.config_slice(cfg), aggregate.CODE_ROOTS),
    }
    for name in (MAIN_TEACHER, *cfg.teachers):
        files[f"train_teacher/{name}.json"] = entry(train_teacher.config_slice(cfg, name), train_teacher.CODE_ROOTS)
    for name in cfg.finetuned_teachers:
        files[f"finetune_teacher/{name}.json"] = entry(
            finetune_teacher.config_slice(cfg, name), finetune_teacher.CODE_ROOTS
        )
    for method in cfg.students.methods:
        roots = train_student.code_roots(cfg, method)
        for seed in cfg.students.seeds:
            files[f"train_student/{method}-{seed}.json"] = entry(train_student.config_slice(cfg, method, seed), roots)
    return files


def write(cfg: StudyConfig, out: Path = OUT) -> list[str]:
    """Write every stage file whose content changed, remove the ones no stage reads any more;
    returns the names written."""
    files = stage_files(cfg)
    written = []
    for name, content in files.items():
        path = out / name
        text = json.dumps(content, indent=2, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text() != text:
            artifacts.write_text(path, text)
            written.append(name)
    for path in sorted(out.rglob("*.json")) if out.is_dir() else []:
        if path.relative_to(out).as_posix() not in files:
            path.unlink()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="study file (default: params.yaml)")
    parser.add_argument("--validate-only", action="store_true", help="check the study; write nothing")
    args = parser.parse_args()
    try:
        cfg = load_config(args.params)
    except ConfigError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    if args.validate_only:
        print(f"{args.params}: valid study {cfg.study!r}")
        return
    written = write(cfg)
    print(f"check_study: {args.params} is valid; {len(written)} stage file(s) changed under {OUT}")


if __name__ == "__main__":
    main()
