"""Model validation without running the model (``shared.model_validation``) and the one loader
(``workers.runtime.load_torchscript``): hostile TorchScript is refused naming the operation,
broken archives are refused with a reason, and nothing in a refused archive ever runs."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from pickletools import genops
from typing import Any

import pytest

from shared.errors import BadRequest
from shared.model_validation import ALLOWLIST_PATH, ModelRefused, default_allowlist, validate_archive

torch = pytest.importorskip("torch")


def scripted(module: Any) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def read_file_helper(x: torch.Tensor) -> torch.Tensor:
    return x + torch.from_file("/etc/hostname", size=4, dtype=torch.uint8).float().sum()


class FileReader(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file("/etc/hostname", size=4, dtype=torch.uint8).float().sum()


class Inner(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return read_file_helper(x)


class ReaderInSubmodule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 2


def file_creator(path: str) -> torch.nn.Module:
    class FileCreator(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.path = path

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.path, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.path = state[0]
            self.training = state[1]
            torch.save(torch.zeros(1), self.path)

    return FileCreator()


class Benign(torch.nn.Module):
    """Submodules and a method calling another, all inside the allowlist."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(torch.relu(self.linear(x)))


def rewrite(archive: bytes, edit: Any) -> bytes:
    """A copy of the archive with ``edit(name, data) -> data`` applied to every record."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, edit(info.filename, source.read(info.filename)))
    return out.getvalue()


def refusal(data: bytes) -> str:
    with pytest.raises(ModelRefused) as caught:
        validate_archive(data)
    assert caught.value.status == 400
    return str(caught.value.reason)


# ---- hostile models ---------------------------------------------------------------------------


def test_forward_reading_a_file_is_refused_naming_the_operation() -> None:
    reason = refusal(scripted(FileReader()))
    assert "forbidden operations [aten::from_file in __torch__." in reason and ".FileReader.forward]" in reason


def test_a_file_read_in_a_submodule_and_a_called_function_is_refused() -> None:
    reason = refusal(scripted(ReaderInSubmodule()))
    assert "aten::from_file in __torch__." in reason and ".read_file_helper" in reason


def test_setstate_creating_a_file_never_runs(tmp_path: Path) -> None:
    target = tmp_path / "created-by-setstate"
    archive = scripted(file_creator(str(target)))
    assert not target.exists()
    reason = refusal(archive)
    assert "aten::save in __torch__." in reason and ".FileCreator.__setstate__" in reason
    from workers.runtime import load_torchscript

    with pytest.raises(ModelRefused):
        load_torchscript(archive)
    assert not target.exists()  # the side effect did not happen
    # ...and it would have: plain torch.jit.load (in another process) runs __setstate__
    model_path = tmp_path / "model.pt"
    model_path.write_bytes(archive)
    subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(model_path)!r})"], check=True)
    assert target.exists()


def test_operations_spelled_through_ops_or_as_methods_are_checked() -> None:
    base = scripted(FileReader())

    def spelled(old: bytes, new: bytes) -> bytes:
        return rewrite(base, lambda name, data: data.replace(old, new) if name.endswith(".py") else data)

    assert "aten::from_file" in refusal(spelled(b"torch.from_file(", b"ops.aten.from_file("))
    assert "aten::as_strided" in refusal(spelled(b"torch.from_file(\"/etc/hostname\", None, 4, dtype=0)", b"x.as_strided([1], [1])"))
    assert "prim::CallFunction" in refusal(spelled(b"torch.from_file(", b"__torch__.nowhere.read("))
    assert "unknown method [stealth]" in refusal(spelled(b"torch.from_file(", b"(x).stealth("))
    assert "unknown function [open]" in refusal(spelled(b"torch.from_file(", b"open("))
    assert "not a name" in refusal(spelled(b"torch.from_file(", b"getattr(torch, \"from_file\")("))
    assert "dynamic lookup" in refusal(spelled(b"torch.from_file(", b"torch.add(getattr(torch, \"from_file\"), "))
    assert "torch.classes" in refusal(spelled(b"torch.from_file(", b"__torch__.torch.classes.io.File("))
    aliased = b"_9 = __torch__.nowhere.read\n    _0 = _9("
    assert "unknown function [_9]" in refusal(spelled(b"_0 = torch.from_file(", aliased))


def test_pickles_may_only_name_archive_classes_and_tensor_helpers() -> None:
    base = scripted(Benign())
    evil = rewrite(base, lambda name, data: re.sub(rb"c__torch__[^\n]*\nBenign\n", b"cos\nsystem\n", data) if name.endswith("data.pkl") else data)
    assert "pickled object of type [os.system]" in refusal(evil)


def test_a_benign_scripted_model_with_submodules_and_methods_passes() -> None:
    report = validate_archive(scripted(Benign()))
    assert {"aten::linear", "aten::relu", "aten::softmax"} <= report.operations
    assert report.functions >= 3


# ---- broken archives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not a readable zip file"),
        (bytes(range(256)) * 64, "not a readable zip file"),
    ],
)
def test_bytes_that_are_not_a_zip_are_refused(data: bytes, reason: str) -> None:
    assert reason in refusal(data)


def zipped(records: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_zips_that_are_not_torchscript_are_refused() -> None:
    assert "a zip, but not TorchScript" in refusal(zipped({"hello.txt": b"hi"}))
    assert "not in one folder" in refusal(zipped({"a/data.pkl": b"", "b/code/x.py": b""}))
    assert "cannot be read" in refusal(zipped({"m/data.pkl": b"\x80\x02).", "m/code/__torch__.py": b"def (:"}))
    assert "unsafe record name" in refusal(zipped({"m/data.pkl": b"", "m/code/" + b"x".decode() * 450 + ".py": b""}))
    assert "pickle that cannot be read" in refusal(zipped({"m/data.pkl": b"\x80\x02garbage", "m/code/__torch__.py": b""}))


def test_the_loader_refuses_what_validation_refuses_with_a_400() -> None:
    from workers.runtime import load_torchscript

    with pytest.raises(BadRequest) as caught:
        load_torchscript(b"random bytes" * 10)
    assert caught.value.status == 400 and "not a TorchScript archive" in caught.value.reason


# ---- the allowlist file -----------------------------------------------------------------------


def test_the_allowlist_file_is_consistent_and_current() -> None:
    data = json.loads(ALLOWLIST_PATH.read_text())
    allowlist = default_allowlist()
    assert data["allowed_operations"] == sorted(allowlist.allowed)
    assert not allowlist.allowed & allowlist.forbidden
    assert {"aten::from_file", "aten::save", "aten::as_strided", "prim::CallFunction", "prim::CallMethod"} <= allowlist.forbidden
    assert all(op in allowlist.allowed or op in allowlist.forbidden for op in allowlist.builtins.values())
    current = {n for n in dir(torch.Tensor) if not (n.startswith("__") and n.endswith("__"))}
    assert current <= allowlist.tensor_methods, "refresh tensor_method_names from dir(torch.Tensor)"
    assert "forward" not in allowlist.tensor_methods


def test_every_allowed_operation_exists_in_torch() -> None:
    """A typo in the allowlist would silently allow nothing; every entry names a real operation."""
    schemas = {s.name for s in torch._C._jit_get_all_schemas()}
    prim_like = ("prim::", "quantized::")
    missing = [op for op in default_allowlist().allowed if op not in schemas and not op.startswith(prim_like)]
    assert missing == []


def test_pickle_opcodes_are_walked_not_run() -> None:
    archive = scripted(Benign())
    data_pkl = zipfile.ZipFile(io.BytesIO(archive)).read("archive/data.pkl")
    assert any(op.name == "GLOBAL" for op, _, _ in genops(data_pkl))
