"""Regenerate docs/configuration.md from the config dataclasses: python scripts/config_doc.py > docs/configuration.md"""

import dataclasses
import inspect
import re

from masklm import config

INTRO = """# Configuration

Settings come from, in order: the defaults below, a preset (`--preset tiny|small|base|large`, files in
`src/masklm/presets/`), a YAML file (`--config FILE`, same nesting as the sections below) and dotted command-line
overrides (`--train.lr 3e-4`, `--model.hidden_size=128`). Unknown keys and impossible values are refused with
one line. The resolved config of every run is saved as `RUN/config.yaml`. Fine-tuning has its own sections,
listed in [finetuning.md](finetuning.md).

Model field names follow Hugging Face's `BertConfig` where the concept is the same.
"""


def main() -> None:
    print(INTRO)
    for section in dataclasses.fields(config.Config):
        cls = type(getattr(config.Config(), section.name))
        print(f"## `{section.name}`: {cls.__doc__.strip()}\n")
        print("| key | default | meaning |\n|---|---|---|")
        source = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            m = re.search(rf"^\s+{f.name}: [^=]+= (.+?)(?:  # (.*))?$", source, re.M)
            default, meaning = (m.group(1).strip(), m.group(2) or "") if m else ("", "")
            print(f"| `{section.name}.{f.name}` | `{default}` | {meaning} |")
        print()


if __name__ == "__main__":
    main()
