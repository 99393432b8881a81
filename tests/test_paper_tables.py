"""experiments/paper/run.py: every table's commands compose, and the ImageNet tables fail in one line
naming what is missing (no download is attempted)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

from conftest import compose_cfg

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "paper" / "run.py"


@pytest.fixture(scope="module")
def paper():
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["lite0", "fashion", "resnet18", "googlenet"])
def test_every_table_command_composes(paper, name, tmp_path):
    t = paper.tables("/data/imagenet/val", all_classes=False)[name]
    config = {"protoscope-generate": "generate", "protoscope-lucent": "lucent", "protoscope-evaluate": "evaluate"}
    for step, cmd in paper.commands(t, tmp_path).items():
        overrides = [o for o in cmd[1:] if not o.startswith("hydra.")]
        cfg = compose_cfg(config[cmd[0]], overrides, tmp_path / step)
        # the model, or (fashion) the kept model of protoscope-train's default recipe by name
        same_model = cfg.get("model") is not None and (
            cfg.model.name == t.model or f"model.name={cfg.model.name}" in t.model_args)
        if step == "paper":
            assert cfg.tag == "paper" and cfg.param._target_.endswith("PixelParam") and same_model
        elif step == "lucent":
            assert cfg.steps == 512 and same_model
        else:
            assert cfg.reference.name in ("imagenette", "imagenet_val", "fashion_mnist")
            assert (cfg.reference.name == "imagenette") == (name == "lite0")
    if name == "fashion":
        assert t.model_args == [f"model.name={paper.default_fashion_model()}"]
        assert paper.default_fashion_model().startswith("fashion_cnn-")
    if name in ("resnet18", "googlenet"):
        assert "academic gown" in t.classes and "mortarboard" in t.classes and len(t.classes) == 10
        assert paper.tables(None, all_classes=True)[name].classes == "all"


@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_imagenet_tables_fail_in_one_line_naming_what_is_missing(paper, name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights here
    monkeypatch.delenv("IMAGENET_VAL", raising=False)
    assert paper.main([name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{name} ImageNet weights" in err and "ImageNet validation folder" in err and "not set" in err
    # with the folder given, only the weights are missing; with cached weights, only the folder
    val = tmp_path / "val"
    val.mkdir()
    assert paper.main([name, "--imagenet-val", str(val)]) == 2
    err = capsys.readouterr().err.strip()
    assert "weights" in err and "validation folder" not in err
    t = paper.tables(None, False)[name]
    cached = paper.missing_inputs(t, None)[0].split("(")[1].split(" absent")[0]
    Path(cached).parent.mkdir(parents=True)
    Path(cached).write_bytes(b"")
    assert paper.main([name]) == 2
    err = capsys.readouterr().err.strip()
    assert "weights" not in err and "ImageNet validation folder" in err


def test_lite0_table_fails_in_one_line_without_an_imagenette_copy(paper, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PROTOSCOPE_IMAGENETTE_ROOT", raising=False)
    monkeypatch.setenv("PROTOSCOPE_DATA", str(tmp_path / "data"))  # no earlier download either
    out = ["--out", str(tmp_path / "out")]
    assert paper.main(["lite0", *out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reference.root=" in err and "$PROTOSCOPE_IMAGENETTE_ROOT" in err
    assert "--download" in err and "not set" in err
    assert paper.main(["lite0", *out, f"reference.root={tmp_path}"]) == 2  # a folder without the photos
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path} holds none" in err
    assert paper.main(["lite0", *out, "classes=all"]) == 2  # only reference overrides pass through
    assert "reference.KEY=VALUE" in capsys.readouterr().err
    # --download fetches before anything runs: offline (a proxy nobody listens on) that fails in one line too
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert paper.main(["lite0", *out, "--download"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not download https://" in err and "reference.root=" in err
    assert not (tmp_path / "out").exists()  # nothing ran
    # given a copy (here a folder of synset folders) the check passes and the root reaches the evaluation
    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    ref = [f"reference.root={tmp_path / 'val'}"]
    assert paper.imagenette_problem(ref) is None
    t = paper.tables(None, False, ref)["lite0"]
    assert paper.commands(t, tmp_path)["evaluation"][4:6] == ["reference=imagenette", *ref]
    assert paper.public(paper.commands(t, tmp_path)["evaluation"])[5] == "reference.root=<copy>"


def test_fashion_table_names_the_missing_trained_model_in_one_line(paper, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROTOSCOPE_MODELS", str(tmp_path / "models"))  # an empty models folder
    assert paper.main(["fashion", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and paper.default_fashion_model() in err and "run protoscope-train" in err
    assert not (tmp_path / "out").exists()  # nothing ran


def fake_evaluation() -> dict:
    """A path_similarity.json of two sources (2 rows each) and one class of 4 natural images."""
    def row(source, spearman, pct, rank):
        return {"source": source, "target_rank": rank, "target_prob": 0.5,
                **{f"{m}/{k}": v for m in ("spearman", "l1") for k, v in
                   (("mean", spearman), ("percentile", pct), ("concat", spearman), ("concat_percentile", pct))}}
    natural = {m: {"mean_scores": [0.1, 0.2, 0.3, 0.4], "concat_scores": [0.1, 0.2, 0.3, 0.4]} for m in ("spearman", "l1")}
    return {"sources": ["prototype", "lucent"], "natural": {"0": natural},
            "prototypes": [row("prototype", 0.2, 40.0, 1), row("prototype", 0.4, 100.0, 2),
                           row("lucent", 0.1, 0.0, 1), row("lucent", 0.1, 0.0, 1)]}


def test_table_rows_name_their_commands_and_give_the_evaluations_numbers(paper, tmp_path):
    t = paper.tables(None, False)["fashion"]
    cmds = paper.commands(t, tmp_path)
    md = paper.markdown(t, fake_evaluation(), cmds, {})
    row = next(line for line in md.splitlines() if line.startswith("| prototypes:"))
    # mean ± std of 0.2 and 0.4, mean percentile 70, half at or above the median, half at 100; 1 of 2 top-1
    assert row.startswith("| prototypes: protoscope-generate experiment=paper | 2 | 0.300 ± 0.141 | 70.0 | 50% | 50% |")
    assert row.endswith("| 1/2 | 0.500 |")
    assert "| Lucent: protoscope-lucent" in md and "| natural images: protoscope-evaluate" in md
    assert all(shlex.join(paper.public(c)) in md for c in cmds.values())  # the Commands section, in full
    tex = paper.latex(t, fake_evaluation())
    assert tex.count(r"\begin{table}") == 2 and "prototypes: protoscope-generate experiment=paper" in tex


def test_steps_run_in_order_and_a_failing_one_stops_in_one_line(tmp_path):
    from protoscope.studies.steps import StepFailed, run_steps

    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    steps = {"first": [sys.executable, "-c", write, str(tmp_path / "a"), "1"],
             "second": [sys.executable, "-c", "import pathlib; print(pathlib.Path('a').read_text() + ' seen')"]}
    seconds = run_steps(steps, logs=tmp_path / "logs", cwd=tmp_path)
    assert list(seconds) == ["first", "second"] and (tmp_path / "logs" / "second.log").read_text() == "1 seen\n"
    failing = {"bad": [sys.executable, "-c", "import sys; print('noise'); sys.exit('the reason')"],
               "never": [sys.executable, "-c", write, str(tmp_path / "b"), "x"]}
    with pytest.raises(StepFailed, match=r"step bad failed \(exit 1\): the reason \(log: .*bad\.log\)"):
        run_steps(failing, logs=tmp_path / "logs", cwd=tmp_path)
    assert not (tmp_path / "b").exists()
