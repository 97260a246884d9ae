"""What the sub-commands share: argparse types with clear messages, and the helper that builds options from
the config dataclasses (each option is declared once, as a field with its help in the metadata)."""
from __future__ import annotations

import argparse

from ..errors import InputError


def int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= minimum, with a clear message otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {value}")
        return value
    return parse


positive_int = int_at_least(1, "positive")
non_negative_int = int_at_least(0, "non-negative")


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0 picks a free one), got {text!r}")
    return value


def parse_counts(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): the one reading of ``--counts`` (air data, air train); InputError otherwise."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--counts: expected comma-separated non-negative integers such as 0,1,2, got {text!r}") \
            from None
    if any(c < 0 for c in counts):
        raise InputError(f"--counts: digit counts must be non-negative, got {text!r}")
    return counts


def counts_type(text: str) -> tuple[int, ...]:
    """parse_counts as an argparse type."""
    try:
        return parse_counts(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--counts: ")) from None


def names_type(choices: tuple[str, ...]):
    """An argparse type: a comma-separated subset of ``choices``."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(p.strip() for p in text.split(",") if p.strip())
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}, got {text!r}")
        return names
    return parse


def budgets_type(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 100,1000, got {text!r}")
    return values


def flag(f) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def dest(f) -> str:
    """Where argparse puts a field's option: its metadata's ``dest`` (``--model`` fills ``architecture``), else
    its flag's name (``--data`` for ``data_path``)."""
    return f.metadata.get("dest", flag(f)[2:].replace("-", "_"))


def add_config_options(group, cls, names, **overrides) -> None:
    """One option per field ``names`` of the config dataclass ``cls``, built from the field: its name with dashes
    (or its metadata's ``flag``), its type (a bool becomes --x/--no-x), its default, its metadata's help, choices
    and metavar. ``overrides``: argparse keywords per field where the command line differs (a default of None
    where the data set decides, or where typed and untyped must differ)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = fields[name]
        kw = {k: v for k, v in f.metadata.items() if k not in ("flag", "dest")}
        kw["default"] = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = str(f.type).replace(" | None", "")
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind in ("int", "float"):
            kw["type"] = int if kind == "int" else float
        elif kind.startswith("tuple"):  # typed as a comma-separated list (argparse parses the default too)
            if kw["default"] is not None:  # (None: the data set's)
                kw["default"] = ",".join(map(str, kw["default"]))  # parsed by parse_counts
        kw.update(overrides.get(name, {}))
        group.add_argument(flag(f), dest=dest(f), **kw)


def config_values(args, cls, names) -> dict:
    """The values air train's options give the fields ``names`` of ``cls``."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {name: getattr(args, dest(fields[name])) for name in names}
