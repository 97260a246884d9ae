"""``air train --config FILE``: a new run from the configuration another run saved, with the options typed beside
it overriding the file. The runs train on sprites, which are drawn procedurally: no MNIST needed."""
import json

import pytest

import attend_infer_repeat.train
from attend_infer_repeat.cli import _NOT_CONFIG, build_parser, main
from attend_infer_repeat.config import ModelConfig, RunConfig, TrainConfig

# --lr 0.002 and --batch-size 16 differ from the defaults, so that the defaults cannot pass for the file's values;
# --compile off is given because this run is made once for the module, outside the per-test AIR_COMPILE=off
TINY = ["--dataset", "sprites", "--n-train", "64", "--n-test", "16", "--batch-size", "16", "--lstm-hidden", "16",
        "--z-what-dim", "4", "--eval-every", "2", "--eval-size", "16", "--checkpoint-every", "2", "--no-progress",
        "--threads", "1", "--lr", "0.002", "--minutes", "30", "--compile", "off"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("saved") / "run"
    assert main(["train", "--steps", "2", "--run-dir", str(run), *TINY]) == 0
    return run


class Trained(Exception):
    """Raised instead of training: carries the configuration air train would have trained."""


@pytest.fixture
def configured(monkeypatch):
    """argv -> the RunConfig ``air train argv`` would train, without training it."""
    def fake_train(cfg, run_dir, resume=False, progress=True):
        raise Trained(cfg)

    monkeypatch.setattr(attend_infer_repeat.train, "train", fake_train)

    def configure(*argv: str) -> RunConfig:
        with pytest.raises(Trained) as e:
            main(["train", *argv])
        return e.value.args[0]
    return configure


def test_a_saved_config_trains_the_same_run_again(saved_run, tmp_path):
    again = tmp_path / "again"
    assert main(["train", "--config", str(saved_run), "--run-dir", str(again), "--no-progress"]) == 0
    first, second = (json.loads((r / "config.json").read_text()) for r in (saved_run, again))
    assert second == first
    assert first["train"]["lr"] == 0.002 and first["train"]["dataset"] == "sprites" and first["model"]["dair"]
    # the file itself and the directory holding it are the same configuration
    assert RunConfig.from_file(saved_run / "config.json") == RunConfig.from_file(saved_run) == \
        RunConfig.from_dict(first)


def test_typed_options_override_the_file_and_defaults_do_not(saved_run, configured, capsys):
    saved = RunConfig.from_file(saved_run)
    assert configured("--config", str(saved_run)) == saved
    # a value typed on purpose wins even where it is the default (argparse alone could not tell it from untyped)
    cfg = configured("--config", str(saved_run), "--lr", str(TrainConfig.lr), "--seed", "7", "--max-steps", "2")
    assert (cfg.train.lr, cfg.train.seed, cfg.model.max_steps) == (TrainConfig.lr, 7, 2)
    assert cfg.train.batch_size == 16 and cfg.model.lstm_hidden == 16  # untouched: the file's
    assert "configuration from" in capsys.readouterr().err
    # budgets as with --resume: --steps alone drops the file's minutes budget, --minutes alone keeps its steps
    assert (lambda t: (t.steps, t.minutes))(configured("--config", str(saved_run), "--steps", "9").train) == (9, None)
    assert (lambda t: (t.steps, t.minutes))(configured("--config", str(saved_run), "--minutes", "2").train) == (2, 2)
    assert configured("--config", str(saved_run), "--counts", "1,2").train.counts == (1, 2)
    assert configured("--config", str(saved_run), "--no-dair").model.dair is False


def test_a_new_data_set_brings_its_own_defaults(saved_run, configured, tmp_path):
    # the file's sprites defaults (10-20 px, DAIR) give way to MNIST's, the file's other values stay
    cfg = configured("--config", str(saved_run), "--dataset", "mnist")
    assert (cfg.train.dataset, cfg.train.digit_size, cfg.train.max_digit_size, cfg.model.dair) == \
        ("mnist", 28, None, False)
    assert cfg.train.lr == 0.002
    # what is typed still wins, and a size typed alone is one size, as on a fresh command line
    cfg = configured("--config", str(saved_run), "--dataset", "mnist", "--dair", "--digit-size", "24")
    assert (cfg.train.digit_size, cfg.train.max_digit_size, cfg.model.dair) == (24, None, True)
    assert (lambda t: (t.digit_size, t.max_digit_size))(configured("--config", str(saved_run),
                                                                   "--digit-size", "12").train) == (12, None)
    # values the file set itself (not its data set's defaults) stay
    d = RunConfig.from_file(saved_run).to_dict()
    d["train"].update(digit_size=12, max_digit_size=16)
    d["model"]["scale_prior_mean"] = 2.5
    (tmp_path / "own.json").write_text(json.dumps(d))
    cfg = configured("--config", str(tmp_path / "own.json"), "--dataset", "fashion")
    assert (cfg.train.digit_size, cfg.train.max_digit_size, cfg.model.scale_prior_mean, cfg.model.dair) == \
        (12, 16, 2.5, False)
    images = tmp_path / "images.npy"
    cfg = configured("--config", str(saved_run), "--data", str(images))
    assert (cfg.train.dataset, cfg.train.data_path, cfg.train.digit_size) == ("files", str(images), 28)


def test_a_many_object_data_set_brings_its_canvas_counts_and_zoom_prior(saved_run, configured):
    cfg = configured("--dataset", "mnist-many")
    assert (cfg.model.image_size, cfg.model.scale_prior_mean, cfg.train.counts) == (84, 5.0, tuple(range(16)))
    cfg = configured("--dataset", "mnist-many", "--counts", "0,5,10", "--scale-prior-mean", "4")
    assert (cfg.train.counts, cfg.model.scale_prior_mean) == ((0, 5, 10), 4.0)
    # from a saved multi-MNIST-like run: its data set's defaults give way to the new one's, then back
    many = configured("--config", str(saved_run), "--dataset", "mnist-many")
    assert (many.model.image_size, many.train.counts, many.train.digit_size) == (84, tuple(range(16)), 14)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not JSON (Expecting property name"),
    ("[1, 2]", "is not a run configuration (one has 'model' and 'train' sections; this has a list)"),
    ('{"steps": 10}', "is not a run configuration (one has 'model' and 'train' sections; this has keys ['steps'])"),
    ('{"model": {}, "train": {"speed": 1}}', "unknown TrainConfig field(s) ['speed']"),
    ('{"model": {"colour": 1}, "train": {}}', "unknown ModelConfig field(s) ['colour']"),
    ('{"model": {}, "train": {}, "notes": "x"}', "unknown RunConfig field(s) ['notes']"),
    ('{"model": {}, "train": {"lr": "fast"}}', "TrainConfig.lr must be float (finite), got 'fast'"),
])
def test_bad_config_files_give_one_clear_line(tmp_path, capsys, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    assert main(["train", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"air train: error: {path}") and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_folder_without_config_and_resume_with_config_are_refused(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "is a folder without config.json" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path), "--resume", "--run-dir", str(tmp_path)]) == 2
    assert "give either --resume" in capsys.readouterr().err


def test_every_train_option_is_a_config_field():
    """--config maps each typed option to the field of the same name: a new option must be one (or be named in
    _NOT_CONFIG, or handled like --data, --dataset and the budgets)."""
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    fields = set(ModelConfig.__dataclass_fields__) | set(TrainConfig.__dataclass_fields__)
    dests = {a.dest for a in train._actions if a.option_strings and a.dest != "help"}
    assert dests - fields - _NOT_CONFIG == {"data"}


def test_train_help_documents_config():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    assert "--config FILE" in text and "override the file's values" in text


def test_init_from_starts_from_the_checkpoints_weights_and_model(saved_run, configured, tmp_path):
    """--init-from: the model configuration comes from the checkpoint with the typed model options in its place,
    and the first step starts from its weights (not new ones)."""
    import torch

    from attend_infer_repeat import AIR
    from attend_infer_repeat.train import Trainer

    saved = RunConfig.from_file(saved_run)
    cfg = configured("--init-from", str(saved_run), "--dataset", "mnist", "--composition", "max",
                     "--scale-prior-std", "0.5", "--steps", "3")
    assert cfg.model == ModelConfig(**{**saved.model.__dict__, "composition": "max", "scale_prior_std": 0.5})
    assert cfg.train.init_from == str(saved_run.resolve()) and cfg.train.steps == 3
    assert cfg.train.lr == TrainConfig.lr  # the training options are the command line's, not the run's
    import dataclasses

    tuned = dataclasses.replace(saved.train, init_from=cfg.train.init_from, seed=5)  # sprites: no MNIST needed
    trainer = Trainer(RunConfig(model=cfg.model, train=tuned), tmp_path / "next", progress=False, tensorboard=False)
    trained = AIR.load(saved_run).state_dict()
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert trainer.model.where_prior_std[0] == 0.5  # the new prior, not the checkpoint's
    # with --config the configuration is the file's, and --init-from goes with it
    cfg = configured("--config", str(saved_run), "--init-from", str(saved_run / "last.pt"))
    assert cfg.model == saved.model and cfg.train.init_from == str((saved_run / "last.pt").resolve())


def test_init_from_trains_a_run_and_refuses_what_does_not_fit(saved_run, tmp_path, capsys):
    run = tmp_path / "tuned"
    assert main(["train", "--init-from", str(saved_run), "--run-dir", str(run), "--steps", "2", *TINY,
                 "--composition", "max"]) == 0
    written = RunConfig.from_file(run)
    assert written.model.composition == "max" and written.train.init_from == str(saved_run.resolve())
    capsys.readouterr()
    assert main(["train", "--init-from", str(saved_run), "--run-dir", str(tmp_path / "x"), *TINY, "--steps", "2",
                 "--z-what-dim", "8"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("air train: error: --init-from") and "other sizes" in last and "vs model" in last
    assert not (tmp_path / "x" / "last.pt").exists()
    assert main(["train", "--init-from", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "y"), *TINY,
                 "--steps", "2"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["train", "--init-from", str(saved_run), "--resume", "--run-dir", str(run), "--no-progress"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_every_option_is_declared_once_in_its_config_field(configured):
    """air train's options are built from the config dataclasses: each offered field has its help in the field's
    metadata, the parser shows that help, and a value typed for it lands in that field of the run's config."""
    import argparse
    import dataclasses

    from attend_infer_repeat.cli import MODEL_OPTIONS, TRAIN_OPTIONS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    typed = {}
    for cls, names in ((TrainConfig, [n for v in TRAIN_OPTIONS.values() for n in v]), (ModelConfig, MODEL_OPTIONS)):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in names:
            f = fields[name]
            action = actions["data" if name == "data_path" else name]
            assert f.metadata["help"] and action.help == f.metadata["help"], name
            assert action.choices is None or tuple(action.choices) == tuple(f.metadata.get("choices", action.choices))
            if isinstance(action, argparse.BooleanOptionalAction):
                typed[name] = True
            elif action.choices:
                typed[name] = list(action.choices)[-1]
            elif action.type is int:
                typed[name] = 4
            elif action.type is float:
                typed[name] = 0.25
    typed.update({"counts": (0, 1), "precision": "fp32", "dataset": "sprites", "device": "cpu", "threads": 1,
                  "max_steps": 4, "dair_memory": False, "allow_overlap": False, "restarts": 1, "max_digit_size": 12,
                  "digit_size": 8, "holdout": 0.25, "max_overlap": 0.25,
                  "architecture": "air"})  # with DAIR and N = 4 (--model grid: the test below)
    argv = []
    for name, value in typed.items():
        flag = actions["data" if name == "data_path" else name].option_strings[0]
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append("--no-" + flag[2:])  # (a BooleanOptionalAction's first option string is --x)
        else:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    cfg = configured(*argv)
    for name, value in typed.items():
        got = getattr(cfg.model if name in MODEL_OPTIONS else cfg.train, name)
        assert got == value, (name, got, value)


def test_the_grid_model_is_chosen_with_model_and_kept_by_config(saved_run, configured):
    cfg = configured("--model", "grid", "--grid-size", "4", "--dataset", "mnist-many")
    assert (cfg.model.architecture, cfg.model.max_steps, cfg.model.dair) == ("grid", 16, False)
    again = configured("--config", str(saved_run), "--model", "grid")  # a sprites run: DAIR gives way
    assert (again.model.architecture, again.model.dair) == ("grid", False)
