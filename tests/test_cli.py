"""The single ``tokfilter`` entry point: every subcommand is wired, its flags reach the code, errors exit non-zero.

A flag that parses but is never read, or that lands in the wrong setting, passes a ``--help`` check:
these tests read every flag's value back where the code uses it.
"""

import argparse
import ast
import importlib
import inspect
import json
import subprocess
import sys

import pytest

from tokfilter.cli import COMMANDS, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokfilter.cli", *args], capture_output=True, text=True, timeout=120)


def parser_of(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"tokfilter {command}")
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return parser


def flags_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def args_read(source: str) -> set[str]:
    """Every ``args.NAME`` a module's code reads."""
    return {node.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args"}


def other_value(action: argparse.Action):
    """A command-line value for ``action`` that differs from its default, and the value it parses to."""
    if action.nargs == 0:  # store_true
        return [], not action.default
    if action.choices:
        choice = next(c for c in action.choices if c != action.default)
        return [str(choice)], choice
    kind = action.type or str
    if kind is int:
        value = (action.default or 0) + 3
    elif kind is float:
        value = (action.default or 0.0) + 0.125
    else:
        value = kind(f"/tmp/flag-{action.dest}")
    return [str(value)], value


def argv_with_every_flag(parser: argparse.ArgumentParser) -> tuple[list[str], dict]:
    argv, expected = [], {}
    for action in flags_of(parser):
        words, value = other_value(action)
        if action.option_strings:
            argv += [action.option_strings[0], *words]
        else:
            argv += words
            value = [value] if action.nargs in ("+", "*") else value
        expected[action.dest] = value
    return argv, expected


def test_help_lists_every_subcommand():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


def test_unknown_subcommand_fails_with_usage():
    out = run_cli("no-such-job")
    assert out.returncode != 0
    assert "invalid choice" in out.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"tokfilter {name}" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_is_read_by_its_command(name):
    """A flag that its module never reads would be accepted and silently do nothing."""
    read = args_read(inspect.getsource(importlib.import_module(COMMANDS[name][0])))
    unread = [a.dest for a in flags_of(parser_of(name)) if a.dest not in read]
    assert not unread, f"tokfilter {name}: flags parsed but never read: {unread}"


def test_an_unread_flag_is_found():
    source = '''
def add_arguments(parser):
    parser.add_argument("--seed", type=int)
    parser.add_argument("--forgotten")

def main(args):
    return args.seed
'''
    assert args_read(source) == {"seed"}


# command -> (function turning the parsed flags into the settings the command runs with,
#             flag dest -> settings field where the names differ,
#             flags the command uses itself, outside those settings)
SETTINGS = {
    "train-classifier": ("tokfilter.training.classifier.train:config_from_args", {}, {"corpus", "out", "threads"}),
    "pretrain": ("tokfilter.training.pretrain.train:config_from_args", {"out": "out_dir"}, {"shards", "tokenizer"}),
    "filter": ("tokfilter.clients.filter_cli:settings_from_args", {"retry_deadline": "retry_deadline_s"},
               {"inputs", "out", "engine", "ray_address", "ray_actors", "resume", "no_progress"}),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_flag_lands_in_its_setting(name):
    """Each flag given a non-default value shows up, with that value, in the setting of its name."""
    target, renamed, used_directly = SETTINGS[name]
    module, function = target.split(":")
    parser = parser_of(name)
    argv, expected = argv_with_every_flag(parser)
    settings = getattr(importlib.import_module(module), function)(parser.parse_args(argv))
    unaccounted = {d for d in expected if d not in used_directly and not hasattr(settings, renamed.get(d, d))}
    assert not unaccounted, f"tokfilter {name}: flags neither in the settings nor used by the command: {unaccounted}"
    for dest, value in expected.items():
        if dest not in used_directly:
            assert getattr(settings, renamed.get(dest, dest)) == value, f"tokfilter {name} --{dest}"


def test_train_classifier_without_max_steps_or_lr_takes_the_tasks_defaults():
    from tokfilter.training.classifier.train import DEFAULT_LR, DEFAULT_MAX_STEPS, config_from_args

    for task in ("token", "document", "joint"):
        config = config_from_args(parser_of("train-classifier").parse_args(["--task", task]))
        assert (config.max_steps, config.lr) == (DEFAULT_MAX_STEPS[task], DEFAULT_LR[task])
    assert config_from_args(parser_of("train-classifier").parse_args(["--task", "joint", "--lr", "3e-5"])).lr == 3e-5


def test_train_tokenizer_flags_shape_the_tokenizer(tmp_path, capsys):
    from tokfilter.windows import load_tokenizer

    texts = [f"record {i}: the heart pumps blood through arteries and veins, number {i * 7}" for i in range(60)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train-tokenizer", str(tmp_path / "in.jsonl"), "--out", str(out), "--vocab-size", "300", "--text-field", "body"]) == 0
    assert load_tokenizer(out).get_vocab_size() == 300
    assert "vocab size 300" in capsys.readouterr().out
    # the field read is the one named: with the default field ("text") there are no texts to learn from
    assert main(["train-tokenizer", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "t2.json"), "--vocab-size", "300"]) == 2


def test_build_corpus_flags_reach_the_manifest(tmp_path):
    out = tmp_path / "corpus"
    assert main(["build-corpus", "--size", "tiny", "--seed", "5", "--label-noise", "0.1", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["size"], manifest["seed"], manifest["label_noise"]) == ("tiny", 5, 0.1)


def test_model_repo_flags_name_the_folders(tmp_path, capsys):
    assert main(["model-repo", "--models-dir", str(tmp_path / "no-models"), "--repo", str(tmp_path / "repo"), "--copy"]) == 2
    assert str(tmp_path / "no-models") in capsys.readouterr().err


def test_model_repo_places_the_joint_model_by_default_and_the_pair_with_two_models(tiny_joint_model_dir, tmp_path, capsys):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_joint_model_dir, models / "joint_classifier")
    assert main(["model-repo", "--models-dir", str(models), "--repo", str(tmp_path / "repo"), "--copy"]) == 0
    for slot in ("token_classifier", "doc_classifier"):
        assert json.loads((tmp_path / "repo" / slot / "1" / "tokfilter.json").read_text())["task"] == "joint"
    capsys.readouterr()
    assert main(["model-repo", "--models-dir", str(models), "--repo", str(tmp_path / "pair"), "--two-models"]) == 2
    assert str(models / "token_classifier") in capsys.readouterr().err


def test_pretrain_flags_are_validated_with_their_values(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--shards", str(tmp_path / "none"), "--seq-len", "0"]) == 2
    assert "seq_len" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--shards", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err


def test_paths_given_as_flags_are_the_ones_opened(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "no-run")]) == 2
    assert str(tmp_path / "no-run") in capsys.readouterr().err
    assert main(["experiment", str(tmp_path / "no-config.json")]) == 2
    assert "no-config.json" in capsys.readouterr().err
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    assert main(["filter", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "shards"), "--token-model", str(tmp_path / "m"),
                 "--doc-model", str(tmp_path / "m"), "--target-tokenizer", str(tmp_path / "t.json")]) == 2
    assert str(tmp_path) in capsys.readouterr().err  # whichever is opened first, it is the one given


def test_settings_table_covers_the_commands_that_build_settings():
    """Commands whose module has a *_from_args function are checked flag by flag above."""
    builders = {name for name, (module, _) in COMMANDS.items()
                if any(n.endswith("_from_args") for n in vars(importlib.import_module(module)))}
    assert builders <= set(SETTINGS), f"add to SETTINGS: {sorted(builders - set(SETTINGS))}"
