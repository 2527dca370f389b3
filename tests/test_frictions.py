"""Small frictions a new user met (issue 12, item 5): each one fixed and kept fixed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from acpsl import models, schemes
from acpsl.config import BUILTIN_MODELS, BUILTIN_SCHEMES, TrainConfig
from acpsl.engine import train
from acpsl.errors import CheckpointError, ConfigError
from acpsl.experiments.cli import main as cli_main
from acpsl.experiments.names import display_name, unique_names
from acpsl.experiments.report import _fmt_rounds
from acpsl.schemes.registry import SCHEMES

README = Path(__file__).resolve().parents[1] / "README.md"


def _small(shared_data: Path) -> list[str]:
    return [
        "--data-dir", str(shared_data), "--dataset", "mnist", "--model", "smallcnn",
        "--subset", "64", "--test-subset", "32", "--batch-size", "16", "--clients", "2",
        "--rounds", "1", "--no-progress",
    ]  # fmt: skip


def test_compare_ends_with_the_result_table(shared_data, tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["compare", "--schemes", "standard", "acp", "--out", str(out), *_small(shared_data)]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    table = (out / "report" / "table.md").read_text()
    assert table.strip() in text  # the table itself, not only where it is
    assert text.rstrip().splitlines()[-1].startswith("report: ")
    assert "| Standard SL |" in text and "| ACP-SL |" in text


def test_compare_dry_run_shows_each_runs_matched_size(shared_data, capsys):
    argv = [
        "compare", "--schemes", "standard", "acp", "randtopk", "quant", "--out", "unused",
        "--dry-run", *_small(shared_data),
    ]  # fmt: skip
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    randtopk = next(line for line in lines if "/randtopk/" in line)
    quant = next(line for line in lines if "/quant/" in line)
    # matched to ACP-SL's realised bytes at run time; the dry run shows the nominal size
    realised = r"matched to the realised uplink bytes of mnist/acp/seed0 at run time; now, "
    assert re.search(realised + r"at ACP-SL's p_base: k=\d+", randtopk), randtopk
    assert re.search(realised + r"at ACP-SL's p_base: bits=\d+", quant), quant
    assert "matched" not in next(line for line in lines if "/standard/" in line)
    assert lines[-1] == "4 runs"
    assert not Path("unused").exists()


def test_rounds_to_target_are_integers():
    assert _fmt_rounds(4.0, 0.0, n=1) == "4"
    assert _fmt_rounds(4.0, 0.0, n=3) == "4 ± 0.0"
    assert _fmt_rounds(4.5, 0.7071, n=2) == "4.5 ± 0.7"
    assert _fmt_rounds(float("nan"), 0.0, n=1) == "—"


def test_display_names_of_schemes_and_ablations():
    assert display_name("acp", {"scorer": "l0"}) == "ACP-SL, ℓ0 scores"
    assert display_name("acp", {"ratio": "random"}) == "ACP-SL, random ratio"
    assert display_name("acp", {"p_base": 0.7}) == "ACP-SL"
    assert display_name("randtopk", {"alpha": 0.1, "k": 98}) == "RandTopk"
    assert display_name("mine", {}) == "mine"
    assert unique_names(
        [("randtopk-alpha0.2", "RandTopk"), ("randtopk-alpha0.5", "RandTopk"), ("acp", "ACP-SL")],
        [{"alpha": 0.2}, {"alpha": 0.5}, {}],
    ) == ["RandTopk, α = 0.2", "RandTopk, α = 0.5", "ACP-SL"]
    for scheme in BUILTIN_SCHEMES:
        assert display_name(scheme) != scheme  # every built-in scheme has a title


def test_demo_refuses_to_delete_an_earlier_run(tmp_path, caplog):
    pytest.importorskip("sklearn")
    from acpsl.engine.demo import run_demo

    keep = tmp_path / "acp" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    with pytest.raises(CheckpointError, match=r"overwrite=True \(acpsl demo --overwrite\)"):
        run_demo(rounds=1, out_dir=tmp_path, device="cpu", progress=False, log=None)
    assert keep.read_text() == "mine" and not (tmp_path / "standard").exists()
    rows = run_demo(
        rounds=1,
        out_dir=tmp_path,
        device="cpu",
        progress=False,
        log=None,
        overwrite=True,
        overrides={"model": "smallcnn", "cut": 1, "subset": 100, "test_subset": 30},
    )
    assert [r.label for r in rows] == ["standard", "acp", "randtopk"]
    assert not keep.exists()
    assert any("deleting" in r.getMessage() and "acp" in r.getMessage() for r in caplog.records)


def test_readme_lists_the_registered_schemes():
    text = README.read_text(encoding="utf-8")
    match = re.search(r"`schemes\.names\(\)` lists ((?:`[a-z0-9]+`(?:, |,? and )?)+)", text)
    assert match, "README must list schemes.names()"
    listed = re.findall(r"`([a-z0-9]+)`", match.group(1))
    assert listed == list(BUILTIN_SCHEMES)


def test_builtin_name_lists_equal_the_registries():
    ours = [n for n in schemes.names() if SCHEMES.get(n).__module__.startswith("acpsl.")]
    assert tuple(ours) == BUILTIN_SCHEMES
    assert tuple(n for n in models.names() if n in BUILTIN_MODELS) == BUILTIN_MODELS
    assert set(BUILTIN_MODELS) <= set(models.names())


def test_train_config_rejects_unknown_scheme_or_model_when_built():
    with pytest.raises(ConfigError, match="unknown scheme 'acp-l0'; choose one of: standard"):
        TrainConfig(scheme="acp-l0")
    with pytest.raises(ConfigError, match="unknown model 'vgg16'; choose one of: resnet18"):
        TrainConfig(model="vgg16")
    with pytest.raises(ConfigError, match="unknown scheme"):
        TrainConfig.from_dict({"scheme": "topk2"})
    # plug-in references are the plug-in loader's to check
    assert TrainConfig(model="my_models:build").model == "my_models:build"


def test_checkpoint_error_from_the_api_names_api_arguments(shared_data, tmp_path):
    config = TrainConfig(
        dataset="mnist",
        data_dir=str(shared_data),
        subset=32,
        test_subset=16,
        model="smallcnn",
        clients=1,
        rounds=1,
        batch_size=16,
        progress=False,
        device="cpu",
    )
    train(config, out_dir=tmp_path, log=None)
    with pytest.raises(CheckpointError) as info:
        train(config, out_dir=tmp_path, log=None)
    message = str(info.value)
    assert "resume=True" in message and "out_dir" in message
    assert not message.split("(")[0].rstrip().endswith("--resume")
