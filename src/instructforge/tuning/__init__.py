"""From data to a model: export formats, supervised fine-tuning, and evaluation.

``export`` is light (standard library only); ``train`` needs the ``train`` extra
(torch, transformers, trl, peft, gguf) and ``eval`` needs it only for Hugging Face folders.
"""


def train_extra_missing(what: str, error: ImportError) -> str:
    """The message for ``error`` raised because the ``train`` extra is not installed.

    >>> train_extra_missing("train", ModuleNotFoundError(name="torch"))[:46]
    'train needs the train extra (torch is missing)'
    """
    return (f"{what} needs the train extra ({error.name or error} is missing): "
            "pip install 'instructforge[train]' or bash scripts/install.sh train")
