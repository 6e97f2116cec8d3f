"""The dataset card of a shard set: its ``README.md`` (docs/format.md#the-dataset-card).

The card is a function of the manifest alone (:func:`render_card`), so ``ipt-data build``,
``ipt-data card SET`` and a subset copied by ``pull``/``push`` write it the same way, and
writing it again gives the same bytes. It has two parts:

* a YAML header in the Hugging Face Hub's format: one ``configs`` entry per task listing that
  task's shards that hold samples (``datasets`` types a split from its first tar and cannot
  type an empty one), and ``dataset_info`` with each task's features, so that
  ``load_dataset(SET, task)`` and the Hub's viewer read every task with its own fields instead of
  one split typed from the first tar;
* Markdown for people: what the set holds, how each pair was made, the build parameters, how to
  load it, the licence and the citation.

The card is never a shard: readers ignore it, ``verify`` knows it, ``push``/``pull`` copy it,
and writing it never touches a shard.
"""

from __future__ import annotations

import json
from pathlib import Path

from ipt_data.layout import CARD_NAME
from ipt_data.manifest import images_line, png_encoder_of, read_set_manifest
from ipt_data.remote import (
    SetLocation,
    check_writable,
    is_hub,
    open_location,
    open_set_location,
    storage_errors,
    write_bytes,
)

# Where the corruptions are specified: the toolkit's own documentation.
CORRUPTIONS_DOC = "docs/corruptions.md"
_SECTIONS = {
    "matlab_bicubic_downscale": "matlab-exact-bicubic",
    "gaussian_noise": "gaussian-noise",
    "rain": "rain",
}
# The Hub's size categories, by number of rows: (upper bound, label).
_SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
_CITATION = """\
@inproceedings{chen2021ipt,
  title     = {Pre-Trained Image Processing Transformer},
  author    = {Chen, Hanting and Wang, Yunhe and Guo, Tianyu and Xu, Chang and Deng, Yiping and
               Liu, Zhenhua and Ma, Siwei and Xu, Chunjing and Xu, Chao and Gao, Wen},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  pages     = {12299--12310},
  year      = {2021}
}

@software{ipt_toolkit,
  title   = {IPT toolkit: shard sets, pretraining and fine-tuning for the Image Processing
             Transformer},
  author  = {{The IPT toolkit contributors}},
  license = {Apache-2.0},
  version = {TOOL_VERSION}
}"""


def card_of_set(shard_set: str | Path, write: bool = True) -> tuple[str, str]:
    """The card of the set at ``shard_set`` (a folder or URL, or its manifest) and where it was
    written: its ``README.md``, replaced, with ``write``; nowhere otherwise (``""``)."""
    if write and is_hub(str(shard_set)):
        check_writable(open_location(shard_set))  # before any request
    location = open_set_location(shard_set)
    if write:
        check_writable(location)
    with storage_errors(location.url):
        manifest, _ = read_set_manifest(location)
        if write:
            write_card(location, manifest)
    return render_card(manifest), location.describe(CARD_NAME) if write else ""


def write_card(location: SetLocation, manifest: dict) -> None:
    """Write the card of ``manifest`` as the set's ``README.md`` (atomically, shards untouched)."""
    write_bytes(location, CARD_NAME, render_card(manifest).encode())


def render_card(manifest: dict) -> str:
    """The ``README.md`` of the set that ``manifest`` (checked) describes."""
    return "---\n" + _yaml(_header(manifest)) + "---\n\n" + _body(manifest)


def task_params(manifest: dict, name: str) -> dict:
    """The task's parameters as the manifest records them (``params.tasks.<name>``, which
    readers do not check: a set from another writer may lack it or hold anything there), or
    ``{}``."""
    tasks = manifest["params"].get("tasks")
    params = tasks.get(name) if isinstance(tasks, dict) else None
    return params if isinstance(params, dict) else {}


def filled_shards(task: dict) -> list[str]:
    """The paths of a manifest task's shards that hold samples, in manifest order."""
    return [shard["path"] for shard in task["shards"] if shard["samples"] > 0]


# --- the YAML header ---------------------------------------------------------------------------


def _header(manifest: dict) -> dict:
    tasks = {name: task for name, task in manifest["tasks"].items() if filled_shards(task)}
    rows = sum(task["samples"] for task in tasks.values())
    header = {
        "pretty_name": f"IPT pretraining pairs ({', '.join(manifest['tasks'])})",
        "license": "other",
        "license_name": "source-images-terms",
        "task_categories": ["image-to-image"],
        "tags": ["ipt-data", "webdataset", "image-restoration", "super-resolution", "denoising"],
        "size_categories": [_size_category(rows)],
        "configs": [
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": filled_shards(task)}],
            }
            for name, task in tasks.items()
        ],
    }
    infos = [_dataset_info(manifest, name) for name in tasks]
    infos = [info for info in infos if info is not None]
    if infos:
        header["dataset_info"] = infos
    return header


def _size_category(rows: int) -> str:
    return next((label for bound, label in _SIZE_CATEGORIES if rows < bound), "n>1T")


def _dataset_info(manifest: dict, name: str) -> dict | None:
    """The task's features as ``datasets`` reads a WebDataset sample of this format (the PNGs as
    images, the JSON as a struct whose ``task`` field is the task's parameters, ``__key__`` and
    ``__url__``); None where the manifest does not record the task's
    parameters (a set from another writer), for ``datasets`` to infer from the data."""
    params = task_params(manifest, name)
    if not params:
        return None
    seed = "uint64" if manifest["format_version"] == 1 else "string"
    sample = {
        "box": [0],
        "image_seed": seed,
        "image_size": [0],
        "patch": 0,
        "seed": 0,
        "source": "",
        "task": params,
    }
    features = [
        {"name": "input.png", "dtype": "image"},
        {"name": "target.png", "dtype": "image"},
        {"name": "json", "struct": _struct(sample, typed={"image_seed"})},
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
    ]
    # No "splits": datasets requires their Arrow size (num_bytes) with the row count, which only
    # a conversion to Arrow knows; the contents table gives the counts.
    return {"config_name": name, "features": features}


def _struct(value: dict, typed: frozenset[str] | set[str] = frozenset()) -> list[dict]:
    """The ``datasets`` YAML features of a JSON object as Arrow infers them: keys sorted (the
    sample JSON is written with sorted keys); ``typed`` keys hold their dtype name instead of a
    value."""
    fields = []
    for key in sorted(value):
        item = value[key]
        field = {"name": key}
        if key in typed:
            field["dtype"] = item
        else:
            field.update(_feature(item))
        fields.append(field)
    return fields


def _feature(value: object) -> dict:
    if isinstance(value, dict):
        return {"struct": _struct(value)}
    if isinstance(value, list):
        inner = _feature(value[0]) if value else {"dtype": "null"}
        return {"list": inner.get("dtype", inner.get("struct"))}
    return {"dtype": _dtype(value)}


def _dtype(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if value is None:
        return "null"
    return "string"


def _yaml(value: object, indent: int = 0) -> str:
    """Block YAML of dicts, lists and scalars; every string double-quoted as JSON writes it
    (a JSON string is a YAML double-quoted scalar), so no name from a manifest can break out."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
    else:
        for item in value:
            if isinstance(item, dict) and item:
                nested = _yaml(item, indent + 2)
                lines.append(f"{pad}- {nested[indent + 2 :]}")
            elif isinstance(item, list) and item:
                lines.append(f"{pad}-\n{_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}- {_scalar(item)}\n")
    return "".join(lines)


def _scalar(value: object) -> str:
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value)


# --- the Markdown body -------------------------------------------------------------------------


def _body(manifest: dict) -> str:
    names = list(manifest["tasks"])
    parts = [
        f"# IPT pretraining pairs: {', '.join(names)}",
        "Corrupted and clean image patch pairs for pretraining the Image Processing Transformer "
        '(IPT; H. Chen et al., "Pre-Trained Image Processing Transformer", CVPR 2021), built by '
        f"`ipt-data build` of the IPT toolkit (ipt-data {manifest['tool_version']}). Each task "
        "is one config of one `train` split; its rows are WebDataset samples, each a corrupted "
        "48×48 input, its clean target and the sample's JSON.",
        "This card was written from the set's `manifest.json`, which lists every shard with its "
        "sample count, size and sha256 (format: the toolkit's `docs/format.md`). Check a copy "
        "with `ipt-data verify SET`.",
        *_subset_note(manifest),
        "## Contents",
        _contents_table(manifest),
        "## Samples",
        "| column | content |\n|---|---|\n"
        "| `input.png` | the corrupted input, 48×48 RGB PNG |\n"
        "| `target.png` | the clean target, (48·s)×(48·s) RGB PNG for scale s, aligned with "
        "the input |\n"
        "| `json` | `source` (the image's path in the source folder), `image_size`, `box` "
        "(`[top, left, height, width]` of the target in source pixels), `patch`, `seed`, "
        "`image_seed` (decimal digits: `int(row['json']['image_seed'])` replays the image's "
        "random stream), `task` (the task's parameters) |\n"
        "| `__key__`, `__url__` | the sample's key and its shard |",
        "## How each pair was made",
        "Every source image is cut into the set's patches per task at positions drawn from the "
        "image's own random stream, which depends only on the seed, the image's path and the "
        f"task (`{CORRUPTIONS_DOC}#seeding`). For each task:",
        "\n".join(_making(name, task, manifest) for name, task in manifest["tasks"].items()),
        "## Build parameters",
        _parameters_table(manifest),
        "## Loading",
        _loading(manifest),
        "## Licence",
        "The IPT toolkit, which built this set, is under the Apache License 2.0. **The pixels are "
        "not:** every input and target is a crop of a source image (the targets unchanged, the "
        "inputs corrupted), so they keep the source images' terms. For a set built from "
        "ImageNet these are the ImageNet terms of access (non-commercial research and "
        "education only, https://image-net.org/download); whoever shares or uses such a set "
        "must hold and follow them. The manifest and this card are Apache-2.0.",
        "## Citation",
        "```bibtex\n" + _CITATION.replace("TOOL_VERSION", manifest["tool_version"]) + "\n```",
    ]
    return "\n\n".join(parts) + "\n"


def _subset_note(manifest: dict) -> list[str]:
    subset = manifest.get("subset_of")
    if subset is None:
        return []
    picked = subset["selection"]
    return [
        f"This is a subset (tasks {picked['tasks']}, shards {picked['shards']}) of the set at "
        f"`{subset['source']}`; image counts and 'too small' are the whole source set's."
    ]


def _contents_table(manifest: dict) -> str:
    lines = [
        "| task (config) | input | target | samples | shards (with samples) | bytes | "
        "images too small |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, task in manifest["tasks"].items():
        shards, filled = len(task["shards"]), len(filled_shards(task))
        lines.append(
            f"| `{name}` | {task['input_size']}×{task['input_size']} | "
            f"{task['target_size']}×{task['target_size']} | {task['samples']:,} | "
            f"{shards:,} ({filled:,}) | {task['bytes']:,} | {task['too_small']:,} |"
        )
    empty = [name for name, task in manifest["tasks"].items() if not filled_shards(task)]
    if empty:
        lines.append(f"\nNo sample at all, so no config: {', '.join(empty)}.")
    return "\n".join(lines)


def _making(name: str, task: dict, manifest: dict) -> str:
    corruption = task_params(manifest, name).get("corruption")
    corruption = corruption if isinstance(corruption, dict) else {}
    kind = corruption.get("kind")
    target = task["target_size"]
    if kind == "matlab_bicubic_downscale":
        how = (
            f"the target is a {target}×{target} crop; the input is the same region of MATLAB "
            f"`imresize(image, 1/{corruption.get('factor')}, 'bicubic')` of the whole image "
            "(MATLAB-exact, antialiased)"
        )
    elif kind == "gaussian_noise":
        sigma = _number(corruption.get("sigma"))
        how = (
            f"the target is a {target}×{target} crop; the input adds Gaussian noise "
            f"N(0, {sigma}²) to each pixel and channel, clipped to 0..255 and rounded"
        )
    elif kind == "rain":
        style = "heavy" if corruption.get("heavy") else "light"
        how = (
            f"the target is a {target}×{target} crop; the input adds one gray rain-streak "
            f"layer ({corruption.get('model')}, {style}) made over the whole image, after Yang "
            "et al. (CVPR 2017)"
        )
    else:
        how = f"the target is a {target}×{target} crop; corruption {json.dumps(corruption)}"
    section = _SECTIONS.get(kind or "")
    where = f"; the toolkit's {CORRUPTIONS_DOC}#{section}" if section else ""
    return f"- `{name}`: {how}{where}."


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _parameters_table(manifest: dict) -> str:
    params, source = manifest["params"], manifest["source"]
    rows = [
        ("format", f"{manifest['format']}, version {manifest['format_version']}"),
        ("built by", f"ipt-data {manifest['tool_version']}"),
        ("seed", params["seed"]),
        ("pairs per image and task", params["patches_per_image"]),
        ("images per shard", params["images_per_shard"]),
        ("PNG encoder", png_encoder_of(manifest)),
        ("source images", f"{source['images']:,} (fingerprint `{source['fingerprint']}`)"),
        ("images", images_line(manifest).removeprefix("images: ")),
    ]
    lines = ["| parameter | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _loading(manifest: dict) -> str:
    first = next(
        (name for name, task in manifest["tasks"].items() if filled_shards(task)),
        next(iter(manifest["tasks"]), "sr_x2"),
    )
    return (
        "With Hugging Face `datasets` (`REPO` is this dataset's Hub id, `OWNER/NAME`, or the "
        "folder that holds this card):\n\n"
        "```python\n"
        "from datasets import load_dataset\n\n"
        f'pairs = load_dataset(REPO, "{first}", split="train")  # or streaming=True\n'
        'row = pairs[0]  # row["input.png"], row["target.png"]: PIL images; row["json"]: dict\n'
        "```\n\n"
        "With [WebDataset](https://github.com/webdataset/webdataset), one task's shards "
        "(their paths are in `manifest.json`):\n\n"
        "```python\n"
        "import webdataset as wds\n"
        "from ipt_data import refuse_foreign_members  # the member gate (optional)\n\n"
        f'urls = [...]  # the "{first}" shard paths or URLs\n'
        "pairs = wds.WebDataset(urls, shardshuffle=False).compose(refuse_foreign_members)"
        '.decode("rgb8")\n'
        "```\n\n"
        "With the IPT toolkit, which checks every shard against the manifest as it reads it:\n\n"
        "```bash\n"
        "ipt-data pull hf://datasets/OWNER/NAME shards/    # a checked local copy\n"
        "ipt-data show hf://datasets/OWNER/NAME -o samples.png\n"
        "ipt-train pretrain --shards hf://datasets/OWNER/NAME --preset ipt-full --out run\n"
        "```"
    )
