"""Config dataclasses as command-line flags: each field of `bonenet.configs` becomes one `--flag` with its
default, help, range and choices, checked while parsing so that a typo fails before TensorFlow loads."""

import argparse
import dataclasses

from bonenet.configs import MAX_TRAINABLE_LAYERS
from bonenet.parts import parse_part
from bonenet.preprocessing.recipes import get_recipe


def add_config_flags(parser, config_class, plan_defaults=False):
    """Adds one `--flag` per config field; its default, help, range and choices come from the field.

    A True boolean becomes `--no-FIELD`. With `plan_defaults`, flags default to None so that only
    what the user typed overrides a plan (the demo's full or quick plan).
    """
    for field in dataclasses.fields(config_class):
        flag, default, meta = field.name.replace("_", "-"), field.default, field.metadata
        text = meta["help"] if default is None else f"{meta['help']} (default {default})"
        if isinstance(default, bool):
            parser.add_argument(f"--{'no-' if default else ''}{flag}", dest=field.name, default=default,
                                action="store_false" if default else "store_true",
                                help=f"do not {meta['help']}" if default else meta["help"])
            continue
        kind = recipe_type if field.name == "recipe" else {int: int, float: float}.get(field.type, str)
        if meta.get("range") is not None:
            kind = in_range(kind, meta["range"])
            text += f"; {meta['range']}"
        if field.name == "trainable_layers":
            kind = all_or(kind, MAX_TRAINABLE_LAYERS)
            text += ", or all"
        parser.add_argument(f"--{flag}", type=kind, default=None if plan_defaults else default,
                            choices=meta.get("choices"), help=text)


def in_range(kind, accepted):
    """An argparse type: `kind` of `value`, refused while parsing when outside `accepted` (a `Range`)."""

    def parse(value):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a{'n integer' if kind is int else ' number'}") from None
        if number not in accepted:
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {accepted}")
        return number

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def all_or(kind, everything):
    """An argparse type that reads "all" as `everything` and anything else as `kind` does."""

    def parse(value):
        if str(value).strip().lower() == "all":
            return everything
        try:
            return kind(value)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc}, or all") from None

    parse.__name__ = kind.__name__
    return parse


def part_type(value):
    """An argparse type: a part name (`wrist`, `XR_WRIST`) as its key, refused while parsing when unknown."""
    try:
        return parse_part(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def recipe_type(value):
    """A recipe name or JSON file, checked while parsing so that a typo fails before TensorFlow loads."""
    try:
        get_recipe(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def config_values(args, config_class):
    """The dataclass fields that `args` holds (None: not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
            if getattr(args, f.name, None) is not None}
