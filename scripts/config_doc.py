"""docs/configuration.md, generated from the config dataclasses (src/masklm/config.py): their fields' types,
defaults and help. Edit the help there, then regenerate:

    python scripts/config_doc.py --write    # rewrite docs/configuration.md
    python scripts/config_doc.py            # print it
tests/test_cli.py fails while the file differs from what `render()` returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from masklm import config

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
REGENERATE = "python scripts/config_doc.py --write"

INTRO = f"""# Configuration

<!-- Generated from src/masklm/config.py by `{REGENERATE}`; edit the help there, not here. -->

Settings come from, in order: the defaults below, a preset (`--preset tiny|small|base|large`, files in
`src/masklm/presets/`), a YAML file (`--config FILE`, same nesting as the sections below) and dotted command-line
overrides (`--train.lr 3e-4`, `--model.hidden_size=128`). Unknown keys and impossible values are refused with
one line. The resolved config of every run is saved as `RUN/config.yaml`. `masklm pretrain --help` and
`masklm finetune --help` list the same settings; `masklm prepare` takes the `data` section's alone (the seed of
its train / validation split is `--seed`). `masklm pretrain` starts from the `small` preset unless `--preset`
names another: the defaults below are what the presets change (BERT-base's shape, for one).

Fine-tuning (`masklm finetune`, and `evaluate` / `predict` as overrides of the settings saved with the model) has
its own sections, `train`, `data` and `head`, listed [below](#fine-tuning) and explained in [finetuning.md](finetuning.md).

Model field names follow Hugging Face's `BertConfig` where the concept is the same.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(root: type, heading: str) -> list[str]:
    """One `### heading `section`` table per section of `root` (Config or FinetuneConfig)."""
    lines = []
    for name, cls in config.sections(root).items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines += [
            f"### {heading}`{name}`: {doc}",
            "",
            "| key | default | meaning | values |",
            "|---|---|---|---|",
        ]
        for s in config.section_settings(cls, name).values():
            values = f"one of {', '.join(f'`{c}`' for c in s.choices)}" if s.choices else s.kind.__name__
            if s.optional:
                values += " or `None`"
            lines.append(f"| `{s.key}` | `{s.default_text}` | {_cell(s.help)} | {values} |")
        lines.append("")
    return lines


def render() -> str:
    """The whole of docs/configuration.md."""
    lines = [INTRO, "## Pretraining", ""]
    lines += _table(config.Config, "")
    lines += ["## Fine-tuning", ""]
    lines += _table(config.FinetuneConfig, "fine-tuning ")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {DOC.relative_to(DOC.parents[1])}")
    if parser.parse_args().write:
        DOC.write_text(render(), encoding="utf-8")
        print(f"wrote {DOC}")
    else:
        print(render(), end="")


if __name__ == "__main__":
    main()
