"""The one registry of file formats: what a model upload may be, and what a job exports.

Export format names are the contract's ``ExportFormat`` enum without its prefix, lowercased
("saved_model" for ``EXPORT_FORMAT_SAVED_MODEL``); an export artifact's ``format`` carries that
name and its ``filename`` the suffix below.
"""

from __future__ import annotations

from dataclasses import dataclass

from pruning.v1 import pruning_pb2 as pb

_PREFIX = "EXPORT_FORMAT_"


@dataclass(frozen=True)
class ExportFormat:
    """One export format of a pruned model."""

    value: pb.ExportFormat.ValueType  # the contract's ExportFormat
    suffix: str  # file name suffix of the exported file
    loadable: bool  # a Keras model file the service also accepts as an upload

    @property
    def name(self) -> str:
        return pb.ExportFormat.Name(self.value).removeprefix(_PREFIX).lower()

    def filename(self, stem: str) -> str:
        return f"{stem}{self.suffix}"


EXPORTS: dict[pb.ExportFormat.ValueType, ExportFormat] = {
    f.value: f
    for f in (
        ExportFormat(pb.EXPORT_FORMAT_KERAS, ".keras", loadable=True),
        ExportFormat(pb.EXPORT_FORMAT_H5, ".h5", loadable=True),
        ExportFormat(pb.EXPORT_FORMAT_SAVED_MODEL, ".zip", loadable=False),
        ExportFormat(pb.EXPORT_FORMAT_TFLITE, ".tflite", loadable=False),
        ExportFormat(pb.EXPORT_FORMAT_TFLITE_INT8, ".int8.tflite", loadable=False),
    )
}
BY_NAME: dict[str, ExportFormat] = {f.name: f for f in EXPORTS.values()}

#: Upload file suffixes of model files to their format name ("keras" or "h5").
MODEL_SUFFIXES: dict[str, str] = {f.suffix: f.name for f in EXPORTS.values() if f.loadable} | {".hdf5": "h5"}
DATASET_SUFFIX = ".npz"


def export(value: pb.ExportFormat.ValueType) -> ExportFormat:
    """The registry entry of an ExportFormat value; KeyError for an unknown one."""
    return EXPORTS[value]


def model_suffix(format_name: str) -> str:
    """The file suffix under which a model of ``format_name`` ("keras" or "h5") is loaded."""
    return BY_NAME[format_name].suffix


assert set(EXPORTS) == set(pb.ExportFormat.values()) - {pb.EXPORT_FORMAT_UNSPECIFIED}, "registry out of date"

_REPORT_SUFFIXES = {
    pb.REPORT_FILE_TENSORBOARD: ".tensorboard.zip",
    pb.REPORT_FILE_HISTORY_PNG: ".history.png",
    pb.REPORT_FILE_LAYERS_PNG: ".layers.png",
}
#: The job report's artifacts (after the exports): format names (the contract's ``ReportFile``)
#: to file name suffixes.
REPORT_FILES: dict[str, str] = {
    pb.ReportFile.Name(value).removeprefix("REPORT_FILE_").lower(): suffix for value, suffix in _REPORT_SUFFIXES.items()
}
assert set(_REPORT_SUFFIXES) == set(pb.ReportFile.values()) - {pb.REPORT_FILE_UNSPECIFIED}, "registry out of date"
