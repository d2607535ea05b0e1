"""Validation of an uploaded TorchScript archive *without running it* (pure; no torch, no I/O).

Loading TorchScript runs code: every ``__setstate__`` in the archive executes while the module
is being unpickled, before anything could inspect ``forward``. So the archive is read here as
data: the zip's records, the TorchScript source in ``code/**/*.py`` (parsed with ``ast``,
never compiled or executed) and the pickles (walked opcode by opcode, never unpickled).

What is checked:

- the zip itself: readable, one top-level folder with ``data.pkl`` and ``code/``, no duplicate,
  over-long or unreadable record names (ml-cpp's lesson: a reader that truncates names can be
  made to skip the record the loader later uses), bounded sizes;
- every function and every method of every class in every code file (``forward``,
  ``__setstate__``, submodules, helpers: all of them, reachable or not): each operation they
  name — ``torch.x(...)`` is ``aten::x``, ``ops.ns.x(...)`` is ``ns::x``, ``x.m(...)`` with a
  tensor method name is ``aten::m``, a bare builtin maps through the allowlist's ``builtins``
  — must be in the allowlist; a call into ``__torch__.…`` code must name a function or class
  defined in the archive (else it is an opaque ``prim::CallFunction``); a method call ``x.m()``
  must name a method the archive defines (else ``prim::CallMethod``); any other callee (a
  local holding a function, ``getattr(torch, ...)``) is refused;
- the pickles (``data.pkl``, ``constants.pkl``, debug pickles): only the globals a TorchScript
  archive uses (tensor rebuilding, storages, ``torch.jit._pickle`` helpers, the archive's own
  ``__torch__`` classes); ``torch.classes`` (C++ classes with native ``__setstate__``) never.

The allowlist is one data file, ``shared/model_allowlist.json`` (where it came from is written
there). ``ModelRefused`` is a 400 naming the first offending operation and where it is.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from pickletools import genops

from shared.errors import BadRequest

ALLOWLIST_PATH = Path(__file__).with_name("model_allowlist.json")
MAX_RECORDS = 100_000
MAX_RECORD_NAME_CHARS = 400  # miniz truncates at 512 (ml-cpp refuses long names for that reason)
MAX_CODE_BYTES = 64 * 1024 * 1024  # all .py and .pkl records together
MODULE_ROOTS = ("torch", "ops", "math")
SAFE_PICKLE_GLOBALS = frozenset(
    {
        "torch._utils _rebuild_tensor_v2",
        "torch._utils _rebuild_tensor",
        "torch._utils _rebuild_parameter",
        "collections OrderedDict",
        "torch.jit._pickle restore_type_tag",
        "torch.jit._pickle build_intlist",
        "torch.jit._pickle build_doublelist",
        "torch.jit._pickle build_boollist",
        "torch.jit._pickle build_tensorlist",
        "torch.jit._pickle build_tensor_from_id",
    }
)
STORAGE_GLOBAL = re.compile(r"^torch [A-Z][A-Za-z0-9]*Storage$")
PICKLE_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"})


class ModelRefused(BadRequest):
    """The definition is not a TorchScript archive inferq will load (400)."""


@dataclass(frozen=True)
class Allowlist:
    allowed: frozenset[str]
    forbidden: frozenset[str]
    builtins: dict[str, str]
    tensor_methods: frozenset[str]

    @staticmethod
    def from_json(text: str) -> Allowlist:
        data = json.loads(text)
        return Allowlist(
            allowed=frozenset(data["allowed_operations"]),
            forbidden=frozenset(data["forbidden_operations"]),
            builtins=dict(data["builtins"]),
            tensor_methods=frozenset(data["tensor_method_names"]),
        )

    def refusal(self, found: dict[str, str]) -> ModelRefused | None:
        """The 400 for a model using ``found`` (operation -> where first seen), or None: forbidden
        operations are named first (as ml-cpp does), then those outside the allowlist."""
        forbidden = sorted(op for op in found if op in self.forbidden)
        unknown = sorted(op for op in found if op not in self.allowed and op not in self.forbidden)
        if forbidden:
            listed = ", ".join(f"{op} in {found[op]}" for op in forbidden)
            return ModelRefused(f"model refused: it uses forbidden operations [{listed}]")
        if unknown:
            listed = ", ".join(f"{op} in {found[op]}" for op in unknown)
            return ModelRefused(f"model refused: it uses operations outside the allowlist [{listed}]")
        return None


@cache
def default_allowlist() -> Allowlist:
    return Allowlist.from_json(ALLOWLIST_PATH.read_text(encoding="utf-8"))


@dataclass
class ArchiveReport:
    """What a valid archive uses (for tests and logs)."""

    operations: set[str] = field(default_factory=set)
    where: dict[str, str] = field(default_factory=dict)  # operation -> first function using it
    functions: int = 0  # methods and free functions checked


# ---- the zip -----------------------------------------------------------------------------------


def _open(data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelRefused(f"model definition is not a TorchScript archive: not a readable zip file ({exc})") from exc
    if not infos:
        raise ModelRefused("model definition is not a TorchScript archive: the zip file is empty")
    if len(infos) > MAX_RECORDS:
        raise ModelRefused(f"model definition has too many records ({len(infos)} > {MAX_RECORDS})")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise ModelRefused("model definition is not a valid TorchScript archive: duplicate record names")
    for name in names:
        if len(name) > MAX_RECORD_NAME_CHARS or "\x00" in name or "\\" in name:
            raise ModelRefused(f"model definition has an unsafe record name [{name[:80]}...]")
    return archive


def _root(archive: zipfile.ZipFile) -> str:
    tops = {info.filename.split("/", 1)[0] for info in archive.infolist()}
    if len(tops) != 1:
        raise ModelRefused("model definition is not a TorchScript archive: records are not in one folder")
    root = tops.pop()
    names = set(archive.namelist())
    if f"{root}/data.pkl" not in names or not any(n.startswith(f"{root}/code/") for n in names):
        raise ModelRefused("model definition is not a TorchScript archive: no data.pkl or code/ (a zip, but not TorchScript)")
    return root


def _read_records(archive: zipfile.ZipFile, suffixes: tuple[str, ...]) -> Iterator[tuple[str, bytes]]:
    budget = MAX_CODE_BYTES
    for info in archive.infolist():
        if info.is_dir() or not info.filename.endswith(suffixes):
            continue
        if info.file_size > budget:
            raise ModelRefused("model definition's code is too large to validate")
        try:
            with archive.open(info) as handle:
                raw = handle.read(budget + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ModelRefused(f"model definition has an unreadable record [{info.filename}]: {exc}") from exc
        budget -= len(raw)
        if budget < 0:
            raise ModelRefused("model definition's code is too large to validate")
        yield info.filename, raw


# ---- the code ----------------------------------------------------------------------------------


def _qualified_prefix(root: str, filename: str) -> str:
    """``archive/code/__torch__/a/b.py`` defines names under ``__torch__.a.b``."""
    inner = filename[len(root) + len("/code/") :]
    return inner[: -len(".py")].replace("/", ".")


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


@dataclass
class _Definitions:
    functions: set[str] = field(default_factory=set)  # qualified free functions and classes
    methods: set[str] = field(default_factory=set)  # method names of any archive class


def _parse(filename: str, source: bytes) -> ast.Module:
    try:
        return ast.parse(source.decode("utf-8"), filename=filename)
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as exc:
        raise ModelRefused(f"model definition has code that cannot be read [{filename}]: {type(exc).__name__}") from exc


def _collect(trees: dict[str, tuple[str, ast.Module]]) -> _Definitions:
    found = _Definitions()
    for prefix, tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                found.functions.add(f"{prefix}.{node.name}")
            if isinstance(node, ast.ClassDef):
                found.methods.update(m.name for m in node.body if isinstance(m, ast.FunctionDef))
    return found


def _function_aliases(function: ast.FunctionDef, defs: _Definitions) -> dict[str, str]:
    """Locals that hold an archive function (the printer writes ``_0 = __torch__.m.f`` then
    ``_0(x)``): a name qualifies only if every binding of it in the function is such an
    assignment (never a parameter, a loop target or anything else)."""
    held: dict[str, set[str]] = {}
    alias_targets: set[int] = set()
    tainted: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            dotted = _dotted(node.value)
            if dotted is not None and dotted in defs.functions and ".classes." not in dotted:
                held.setdefault(node.targets[0].id, set()).add(dotted)
                alias_targets.add(id(node.targets[0]))
                continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del) and id(node) not in alias_targets:
            tainted.add(node.id)
        elif isinstance(node, ast.arg):
            tainted.add(node.arg)
    return {name: targets.pop() for name, targets in held.items() if name not in tainted and len(targets) == 1}


class _CodeChecker(ast.NodeVisitor):
    def __init__(self, allowlist: Allowlist, defs: _Definitions, where: str, report: ArchiveReport) -> None:
        self.allowlist, self.defs, self.where, self.report = allowlist, defs, where, report
        self.aliases: dict[str, str] = {}  # local name -> the archive function it always holds

    def use(self, operation: str) -> None:
        self.report.operations.add(operation)
        self.report.where.setdefault(operation, self.where)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, outer_aliases = self.where, self.aliases
        self.where = f"{outer}.{node.name}"
        self.aliases = _function_aliases(node, self.defs)
        self.report.functions += 1
        self.generic_visit(node)
        self.where, self.aliases = outer, outer_aliases

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer = self.where
        self.where = f"{outer}.{node.name}"
        self.generic_visit(node)
        self.where = outer

    def visit_Lambda(self, node: ast.Lambda) -> None:
        raise ModelRefused(f"model refused: a lambda in [{self.where}] (not TorchScript)")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        """``torch.x`` / ``ops.ns.x`` / ``math.x`` name an operation wherever they appear."""
        dotted = _dotted(node)
        if dotted is None:
            self.generic_visit(node)
            return
        if ".classes." in f".{dotted}." or dotted.startswith("classes."):
            raise ModelRefused(f"model refused: custom class [{dotted}] in [{self.where}]")
        head, _, rest = dotted.partition(".")
        if head == "ops" and rest.count(".") == 1:
            self.use(rest.replace(".", "::"))
        elif head in ("torch", "math") and rest and "." not in rest:
            self.use(f"aten::{rest}")
        elif head in MODULE_ROOTS:
            raise ModelRefused(f"model refused: unknown operation [{dotted}] in [{self.where}]")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        dotted = _dotted(func)
        if isinstance(func, ast.Name) and func.id in self.aliases:
            self._method(self.aliases[func.id].rsplit(".", 1)[1], allow_defined=True)  # prim::CallFunction, checked
        elif isinstance(func, ast.Name):
            operation = self.allowlist.builtins.get(func.id)
            if operation is None:
                raise ModelRefused(f"model refused: call of unknown function [{func.id}] in [{self.where}]")
            if func.id in ("getattr", "hasattr") and node.args and _dotted(node.args[0]) is not None:
                target = str(_dotted(node.args[0])).split(".")[0]
                if target in MODULE_ROOTS or target.startswith("__torch__"):
                    raise ModelRefused(f"model refused: dynamic lookup [{func.id}({target}, ...)] in [{self.where}]")
            self.use(operation)
        elif dotted is not None and dotted.split(".")[0] in MODULE_ROOTS:
            self.visit_Attribute(func)  # type: ignore[arg-type]
        elif dotted is not None and dotted.startswith("__torch__."):
            if ".classes." in dotted or dotted not in self.defs.functions:
                raise ModelRefused(f"model refused: [prim::CallFunction] into unknown code [{dotted}] in [{self.where}]")
            self._method(dotted.rsplit(".", 1)[1], allow_defined=True)
        elif isinstance(func, ast.Attribute):
            self.visit(func.value)  # the receiver
            self._method(func.attr, allow_defined=func.attr in self.defs.methods)
        else:
            raise ModelRefused(f"model refused: a call whose target is not a name in [{self.where}]")
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            self.visit(argument)

    def _method(self, name: str, *, allow_defined: bool) -> None:
        if name in self.allowlist.tensor_methods or f"aten::{name}" in self.allowlist.forbidden:
            self.use(f"aten::{name}")  # whatever the receiver is, it must be an allowed operation
        elif not allow_defined:
            raise ModelRefused(f"model refused: [prim::CallMethod] of unknown method [{name}] in [{self.where}]")


# ---- the pickles -------------------------------------------------------------------------------


def _check_pickle(filename: str, raw: bytes, defs: _Definitions) -> None:
    try:
        for opcode, argument, _ in genops(raw):
            if opcode.name not in PICKLE_CODE_OPCODES:
                continue
            if opcode.name != "GLOBAL":
                raise ModelRefused(f"model refused: pickle opcode [{opcode.name}] in [{filename}]")
            name = str(argument)
            if name in SAFE_PICKLE_GLOBALS or STORAGE_GLOBAL.match(name):
                continue
            module, _, attribute = name.partition(" ")
            qualified = f"{module}.{attribute}"
            if module.startswith("__torch__") and ".classes" not in module and qualified in defs.functions:
                continue
            raise ModelRefused(f"model refused: pickled object of type [{qualified}] in [{filename}]")
    except (ValueError, IndexError, KeyError, EOFError, UnicodeDecodeError) as exc:
        raise ModelRefused(f"model definition has a pickle that cannot be read [{filename}]: {exc}") from exc


# ---- entry point -------------------------------------------------------------------------------


def validate_archive(data: bytes, allowlist: Allowlist | None = None) -> ArchiveReport:
    """Check a TorchScript archive without running any of it; raises ``ModelRefused``."""
    allowlist = allowlist or default_allowlist()
    archive = _open(data)
    root = _root(archive)
    trees: dict[str, tuple[str, ast.Module]] = {}
    pickles: list[tuple[str, bytes]] = []
    for filename, raw in _read_records(archive, (".py", ".pkl", ".debug_pkl")):
        if filename.endswith(".py"):
            if not filename.startswith(f"{root}/code/"):
                raise ModelRefused(f"model definition has code outside code/ [{filename}]")
            trees[filename] = (_qualified_prefix(root, filename), _parse(filename, raw))
        else:
            pickles.append((filename, raw))
    defs = _collect(trees)
    report = ArchiveReport()
    for filename, (prefix, tree) in trees.items():
        try:
            _CodeChecker(allowlist, defs, prefix, report).visit(tree)
        except RecursionError as exc:
            raise ModelRefused(f"model definition has code nested too deeply [{filename}]") from exc
    refusal = allowlist.refusal(report.where)
    if refusal is not None:
        raise refusal
    for filename, raw in pickles:
        _check_pickle(filename, raw, defs)
    return report


def operations_of(archives: Iterable[bytes]) -> set[str]:
    """Every operation a set of valid archives uses (for tests and for extending the allowlist)."""
    found: set[str] = set()
    for data in archives:
        found |= validate_archive(data).operations
    return found
