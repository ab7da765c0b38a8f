"""The step lifecycle (pipelines.steps.execute), step names and config freezing, on real run folders."""

from __future__ import annotations

import pytest

from noisystudent.errors import UserError
from noisystudent.io import read_json, write_json
from pipelines import steps
from pipelines.config import ExperimentConfig, config_from_dict
from pipelines.frozen import FrozenConfig, diff, strip
from pipelines.state import RunDir
from pipelines.steps import Outcome, Step, StepContext, execute


@pytest.fixture
def run(tmp_path):
    r = RunDir(tmp_path / "run")
    r.freeze_config(ExperimentConfig(name="steps"))
    return r


def _counting_step(calls: list, name: str = "count", needs: tuple = ()) -> Step:
    def work(ctx: StepContext) -> Outcome:
        calls.append(ctx.g)
        out = ctx.run.gen(ctx.g) / name
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "summary.json", {"calls": len(calls), "g": ctx.g})
        return Outcome({"calls": len(calls)}, [out / "summary.json"], {"note": "made"})

    return Step(name, work, lambda run, g: run.gen(g) / name, "summary.json", needs=needs, missing=f"{name} output",
                command=f"noisystudent {name} {{root}} --generation {{g}}")


def test_execute_records_once_and_returns_the_record_after(run):
    calls: list = []
    step = _counting_step(calls)
    assert execute(step, StepContext(run, run.load_config(), 2)) == {"calls": 1}
    info = run.step_info("gen-2/count")
    assert info["note"] == "made" and info["seconds"] >= 0 and list(info["artifacts"]) == ["gen-2/count/summary.json"]
    # done: the record read back, no work
    assert execute(step, StepContext(run, run.load_config(), 2)) == {"calls": 1, "g": 2} and calls == [2]
    # forced: done again
    assert execute(step, StepContext(run, run.load_config(), 2, force=True)) == {"calls": 2} and calls == [2, 2]


def test_a_missing_need_names_the_command_that_makes_it(run):
    first: list = []
    need = _counting_step(first, "first")
    second = _counting_step([], "second", needs=(need,))
    with pytest.raises(UserError, match=rf"generation 3 has no first output; run `noisystudent first {run.root} "
                                        r"--generation 3` first"):
        execute(second, StepContext(run, run.load_config(), 3))
    assert not run.is_done("gen-3/second")
    execute(need, StepContext(run, run.load_config(), 3))
    assert execute(second, StepContext(run, run.load_config(), 3)) == {"calls": 1}


def test_the_generation_tuple_is_the_one_status_and_the_loop_read():
    assert tuple(s.name for s in steps.GENERATION) == steps.GENERATION_STEPS
    assert steps.steps_for(0) == (steps.TEACHER_STEP,) and steps.steps_for(4) == steps.GENERATION
    assert [s.name for s in steps.SELECT.needs] == ["label"] and steps.STUDENT.needs == (steps.SELECT,)


def test_step_names():
    assert steps.step_name(3, "label") == "gen-3/label" and steps.gen_folder(3) == "gen-3"
    assert steps.generation_of("gen-12/select") == 12 and steps.generation_of("gen-12") == 12
    assert steps.generation_of("baselines/oracle") is None and steps.generation_of("gen-x/label") is None
    assert steps.split_step("gen-2/promote") == (2, "promote") and steps.split_step("baselines/oracle") == (None, "oracle")
    names = ["baselines/oracle", "gen-10/label", "gen-2/student", "gen-2/label", "gen-0/teacher", "distill/student"]
    assert sorted(names, key=steps.step_order) == ["gen-0/teacher", "gen-2/label", "gen-2/student", "gen-10/label",
                                                   "baselines/oracle", "distill/student"]


def test_frozen_config_refuses_changes_outside_the_runtime_fields(run):
    cfg = config_from_dict({"name": "steps", "ray": {"workers": 0}, "student": {"generations": 5}})
    assert run.freeze_config(cfg).ray.workers == 0  # runtime fields may change, and are written back
    assert run.load_config().student.generations == 5
    with pytest.raises(UserError, match=r"different config \(changed: seed, teacher_train.epochs\)"):
        run.freeze_config(config_from_dict({"name": "steps", "seed": 3, "teacher_train": {"epochs": 1}}))


def test_frozen_config_gives_an_older_file_its_legacy_values(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("name: old\n")
    frozen = FrozenConfig(path, config_from_dict, ("ray",), {"seed": 7})
    assert frozen.legacy_fields(frozen.raw()) == ["seed"] and frozen.load().seed == 7
    new = config_from_dict({"name": "old"})
    _, changed = frozen.changes(new)
    assert changed == [] and new.seed == 7


def test_diff_and_strip():
    assert diff({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 1, "c": 4}, "e": 5}) == ["a.c", "d", "e"]
    assert strip({"ray": {"workers": 2}, "student": {"generations": 3, "x": 1}}, ("ray", "student.generations")) == \
        {"student": {"x": 1}}
