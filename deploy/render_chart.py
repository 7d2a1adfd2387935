#!/usr/bin/env python3
"""Render the embed Helm chart without a helm binary.

Implements the part of Go's text/template, Sprig and Helm that deploy/helm/embed uses, with
their semantics (whitespace trimming, truthiness, map ranges in key order, values as float64,
missing values printing as nothing, Helm's values merge and install order), and refuses
anything else with an error instead of guessing. Keep the chart's templates within this
subset, and real Helm renders them to the same objects.

    .venv/bin/python deploy/render_chart.py                      # default values to stdout
    .venv/bin/python deploy/render_chart.py -f deploy/helm/embed/values-gpu.yaml
    .venv/bin/python deploy/render_chart.py --write              # regenerate deploy/manifests/
    .venv/bin/python deploy/render_chart.py --notes              # NOTES.txt for those values

Supported: {{ pipeline }}, {{- and -}} trimming, {{/* comments */}}, if / else if / else,
with / else, range (lists and maps, with $i, $v :=), define and include, $variables and $,
parentheses, string and number literals, and the functions in FUNCTIONS below.
"""

from __future__ import annotations

import argparse
import copy
import decimal
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

DEPLOY = Path(__file__).resolve().parent
CHART = DEPLOY / "helm" / "embed"
MANIFESTS = DEPLOY / "manifests"
RELEASE = "embed"

# (values overlays on top of the chart's values.yaml, the checked-in file they render to)
RENDERS: list[tuple[list[Path], Path]] = [
    ([], MANIFESTS / "embed.yaml"),
    ([CHART / "values-gpu.yaml"], MANIFESTS / "embed-gpu.yaml"),
]


class RenderError(Exception):
    """A template that real Helm would reject, or that uses more than this renderer knows."""


# ---------------------------------------------------------------------------------------------
# Values: printing as Go prints them

def go_float(f: float) -> str:
    """fmt's %v of a float64: strconv 'g' with the shortest digits, %e from exponent 6 on."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign, digits, exp = decimal.Decimal(repr(f)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    # value = 0.ds * 10^dp
    dp = len(digits) + exp
    neg = "-" if sign else ""
    x = dp - 1
    if x < -4 or x >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= len(ds):
        return f"{neg}{ds}{'0' * (dp - len(ds))}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def go_str(v: Any) -> str:
    """What text/template prints for a value (nil prints nothing: Helm drops "<no value>")."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, str):
        return v
    raise RenderError(f"printing a {type(v).__name__} directly (Go would print map[...] or [...]); use toYaml or toJson")


def go_quote(s: str) -> str:
    """strconv.Quote (Go's %q)."""
    out = ['"']
    named = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v", '"': r"\"", "\\": r"\\"}
    for ch in s:
        if ch in named:
            out.append(named[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def truth(v: Any) -> bool:
    """text/template's notion of true: not the zero value, not empty."""
    if v is None:
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def as_float64(v: Any) -> Any:
    """Helm reads values through JSON: every number is a float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {k: as_float64(x) for k, x in v.items()}
    if isinstance(v, list):
        return [as_float64(x) for x in v]
    raise RenderError(f"unsupported value type {type(v).__name__}")


def jsonish(v: Any) -> Any:
    """A float64 that holds an integer marshals as one (JSON, and so toYaml and toJson)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {k: jsonish(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonish(x) for x in v]
    return v


def to_int(v: Any) -> int:
    """Sprig's toInt (cast.ToInt)."""
    if v is None:
        return 0
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            return 0
    raise RenderError(f"int of a {type(v).__name__}")


# ---------------------------------------------------------------------------------------------
# Functions (Sprig and Helm)

class Lazy:
    """An argument evaluated only when asked for (and/or short-circuit, as since Go 1.18)."""

    def __init__(self, thunk: Callable[[], Any]):
        self.thunk = thunk

    def get(self) -> Any:
        return self.thunk()


def f_and(*args: Lazy) -> Any:
    v = None
    for a in args:
        v = a.get()
        if not truth(v):
            return v
    return v


def f_or(*args: Lazy) -> Any:
    v = None
    for a in args:
        v = a.get()
        if truth(v):
            return v
    return v


def f_printf(fmt: str, *args: Any) -> str:
    it = iter(args)

    def one(m: re.Match) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        try:
            a = next(it)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        if verb in "sv":
            return go_str(a)
        if verb == "q":
            return go_quote(go_str(a))
        if verb == "d" and isinstance(a, int) and not isinstance(a, bool):
            return str(a)
        raise RenderError(f"printf %{verb} of {a!r} is outside the supported subset")

    return re.sub(r"%([%svqd])", one, fmt)


def f_to_yaml(v: Any) -> str:
    if v is None:
        return "null"
    text = yaml.safe_dump(jsonish(v), default_flow_style=False, sort_keys=True, allow_unicode=True, width=1 << 30)
    if text.endswith("\n...\n"):  # a bare scalar
        text = text[: -len("...\n")]
    return text[:-1] if text.endswith("\n") else text


def f_to_json(v: Any) -> str:
    text = json.dumps(jsonish(v), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # encoding/json escapes these for HTML safety.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def f_indent(n: Any, s: str) -> str:
    pad = " " * to_int(n)
    return pad + s.replace("\n", "\n" + pad)


def f_empty(v: Any) -> bool:
    return not truth(v)


def f_eq(a: Any, *bs: Any) -> bool:
    if not bs:
        raise RenderError("eq needs two arguments")
    return any(a == b and type(a) is type(b) for b in bs)


def f_required(msg: str, v: Any) -> Any:
    if v is None or (isinstance(v, str) and v == ""):
        raise RenderError(f"required: {msg}")
    return v


def f_fail(msg: str) -> str:
    raise RenderError(f"fail: {msg}")


def f_trunc(n: Any, s: str) -> str:
    n = to_int(n)
    return s[:n] if n >= 0 else s[n:]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "and": f_and,
    "or": f_or,
    "not": lambda v: not truth(v),
    "eq": f_eq,
    "ne": lambda a, b: not f_eq(a, b),
    "printf": f_printf,
    "quote": lambda *vs: " ".join(go_quote(go_str(v)) for v in vs if v is not None),
    "default": lambda d, v=None: d if f_empty(v) else v,
    "toYaml": f_to_yaml,
    "toJson": f_to_json,
    "indent": f_indent,
    "nindent": lambda n, s: "\n" + f_indent(n, s),
    "sha256sum": lambda s: hashlib.sha256(go_str(s).encode()).hexdigest(),
    "trunc": f_trunc,
    "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
    "replace": lambda old, new, s: s.replace(old, new),
    "contains": lambda sub, s: sub in s,
    "hasKey": lambda d, k: isinstance(d, dict) and k in d,
    "int": to_int,
    "add": lambda *vs: sum(to_int(v) for v in vs),
    "required": f_required,
    "fail": f_fail,
}
LAZY = {"and", "or"}


# ---------------------------------------------------------------------------------------------
# Lexing and parsing

TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<decl>:=)
    | (?P<punct>[|(),])
    | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


def tokenize(src: str, where: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(src):
        if src[pos:].strip() == "":
            break
        m = TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise RenderError(f"{where}: cannot read {src[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class Node:
    pass


class Text(Node):
    def __init__(self, text: str):
        self.text = text


class Action(Node):
    def __init__(self, pipe: "Pipeline"):
        self.pipe = pipe


class If(Node):
    def __init__(self):
        self.branches: list[tuple[Pipeline, list[Node]]] = []
        self.otherwise: list[Node] = []


class With(Node):
    def __init__(self, pipe: "Pipeline"):
        self.pipe = pipe
        self.body: list[Node] = []
        self.otherwise: list[Node] = []


class Range(Node):
    def __init__(self, pipe: "Pipeline"):
        self.pipe = pipe
        self.body: list[Node] = []
        self.otherwise: list[Node] = []


class Pipeline:
    def __init__(self, decl: list[str], cmds: list[list[Any]], where: str):
        self.decl = decl
        self.cmds = cmds
        self.where = where


def parse_pipeline(tokens: list[tuple[str, str]], where: str) -> Pipeline:
    decl: list[str] = []
    # $x := ... or $k, $v := ...
    if any(k == "decl" for k, _ in tokens):
        i = [k for k, _ in tokens].index("decl")
        names = [v for k, v in tokens[:i] if k == "var"]
        if not names or any(k not in ("var", "punct") for k, _ in tokens[:i]):
            raise RenderError(f"{where}: bad declaration")
        decl, tokens = names, tokens[i + 1:]
    pos = 0

    def operand() -> Any:
        nonlocal pos
        kind, val = tokens[pos]
        pos += 1
        if kind == "punct" and val == "(":
            inner = pipeline_until(")")
            return ("pipe", inner)
        if kind == "str":
            return ("lit", json.loads(val))
        if kind == "raw":
            return ("lit", val[1:-1])
        if kind == "num":  # an untyped constant: int unless it has a fraction
            return ("lit", float(val) if "." in val else int(val))
        if kind in ("var", "field", "ident"):
            return (kind, val)
        raise RenderError(f"{where}: unexpected {val!r}")

    def pipeline_until(end: str | None) -> list[list[Any]]:
        nonlocal pos
        cmds: list[list[Any]] = [[]]
        while pos < len(tokens):
            kind, val = tokens[pos]
            if kind == "punct" and val == end:
                pos += 1
                return cmds
            if kind == "punct" and val == "|":
                pos += 1
                cmds.append([])
                continue
            cmds[-1].append(operand())
        if end is not None:
            raise RenderError(f"{where}: missing {end!r}")
        return cmds

    cmds = pipeline_until(None)
    if any(not c for c in cmds):
        raise RenderError(f"{where}: empty command in pipeline")
    return Pipeline(decl, cmds, where)


def lex(src: str, name: str) -> list[tuple[str, Any]]:
    """Text and actions, with trim markers applied to the text around them."""
    items: list[tuple[str, Any]] = []
    pos = 0
    trim_next = False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if start < 0:
            items.append(("text", text))
            return items
        line = src.count("\n", 0, start) + 1
        where = f"{name}:{line}"
        inner_start = start + 2
        if src.startswith("- ", inner_start) or src.startswith("-\t", inner_start) or src.startswith("-\n", inner_start):
            text = text.rstrip(" \t\r\n")
            inner_start += 1
        items.append(("text", text))
        if src[inner_start:].lstrip(" \t\r\n").startswith("/*"):
            m = re.compile(r"\*/(\s-)?\}\}").search(src, inner_start)
            if not m:
                raise RenderError(f"{where}: unclosed comment")
            trim_next = m.group(1) is not None
            pos = m.end()
            continue
        # The closing braces, outside string literals.
        i, quote = inner_start, None
        while i < len(src):
            c = src[i]
            if quote:
                if c == "\\" and quote == '"':
                    i += 2
                    continue
                if c == quote:
                    quote = None
            elif c in "\"`":
                quote = c
            elif src.startswith("}}", i):
                break
            i += 1
        else:
            raise RenderError(f"{where}: unclosed action")
        inner = src[inner_start:i]
        trim_next = False
        if re.search(r"\s-$", inner):
            inner = inner[:-1]
            trim_next = True
        pos = i + 2
        body = inner.strip()
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise RenderError(f"{where}: unclosed comment")
            continue
        items.append(("action", (body, where)))


def parse(src: str, name: str, defines: dict[str, list[Node]]) -> list[Node]:
    items = lex(src, name)
    root: list[Node] = []
    # (node, the list new nodes go to, keyword)
    stack: list[tuple[Any, list[Node], str]] = [(None, root, "root")]
    for kind, item in items:
        target = stack[-1][1]
        if kind == "text":
            if item:
                target.append(Text(item))
            continue
        body, where = item
        word, _, rest = body.partition(" ")
        rest = rest.strip()
        if word == "if":
            node = If()
            node.branches.append((parse_pipeline(tokenize(rest, where), where), []))
            target.append(node)
            stack.append((node, node.branches[-1][1], "if"))
        elif word in ("with", "range"):
            node = (With if word == "with" else Range)(parse_pipeline(tokenize(rest, where), where))
            target.append(node)
            stack.append((node, node.body, word))
        elif word == "define":
            m = re.fullmatch(r'"([^"]+)"', rest)
            if not m:
                raise RenderError(f"{where}: define needs a quoted name")
            body_nodes: list[Node] = []
            defines[m.group(1)] = body_nodes
            stack.append((None, body_nodes, "define"))
        elif word == "else":
            node, _, kw = stack[-1]
            if kw not in ("if", "with", "range"):
                raise RenderError(f"{where}: else outside if/with/range")
            if rest.startswith("if ") and kw == "if":
                node.branches.append((parse_pipeline(tokenize(rest[3:], where), where), []))
                stack[-1] = (node, node.branches[-1][1], "if")
            elif rest == "":
                stack[-1] = (node, node.otherwise, kw + "-else")
            else:
                raise RenderError(f"{where}: unsupported else form {body!r}")
        elif word == "end":
            if len(stack) == 1:
                raise RenderError(f"{where}: end without a block")
            stack.pop()
        elif word in ("template", "block", "break", "continue"):
            raise RenderError(f"{where}: {word} is outside the supported subset (use include)")
        else:
            target.append(Action(parse_pipeline(tokenize(body, where), where)))
    if len(stack) != 1:
        raise RenderError(f"{name}: {stack[-1][2]} block not closed")
    return root


# ---------------------------------------------------------------------------------------------
# Execution

class Scope:
    def __init__(self, root: Any):
        self.frames: list[dict[str, Any]] = [{"$": root}]

    def push(self) -> None:
        self.frames.append({})

    def pop(self) -> None:
        self.frames.pop()

    def set(self, name: str, v: Any) -> None:
        self.frames[-1][name] = v

    def get(self, name: str, where: str) -> Any:
        for f in reversed(self.frames):
            if name in f:
                return f[name]
        raise RenderError(f"{where}: undefined variable {name}")


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]):
        self.defines = defines
        self.depth = 0

    def fields(self, v: Any, names: list[str], where: str, shown: str) -> Any:
        for n in names:
            if v is None:
                raise RenderError(f"{where}: nil pointer evaluating interface {{}}.{n} (in {shown})")
            if not isinstance(v, dict):
                raise RenderError(f"{where}: can't evaluate field {n} in type {type(v).__name__} (in {shown})")
            v = v.get(n)
        return v

    def operand(self, op: Any, dot: Any, scope: Scope, where: str) -> Any:
        kind, val = op
        if kind == "lit":
            return val
        if kind == "pipe":
            return self.pipeline(Pipeline([], val, where), dot, scope)
        if kind == "field":
            return dot if val == "." else self.fields(dot, val[1:].split("."), where, val)
        if kind == "var":
            name, *rest = val.split(".")
            return self.fields(scope.get(name, where), rest, where, val)
        if kind == "ident":
            if val in ("true", "false"):
                return val == "true"
            if val == "nil":
                return None
            return self.call(val, [], dot, scope, where, None)
        raise RenderError(f"{where}: unexpected operand {val!r}")

    def call(self, fn: str, args: list[Any], dot: Any, scope: Scope, where: str, piped: Any, has_piped: bool = False) -> Any:
        if fn == "include":
            vals = [self.operand(a, dot, scope, where) for a in args] + ([piped] if has_piped else [])
            if len(vals) != 2:
                raise RenderError(f"{where}: include takes a name and a value")
            return self.include(vals[0], vals[1], where)
        if fn not in FUNCTIONS:
            raise RenderError(f"{where}: function {fn!r} is outside the supported subset")
        if fn in LAZY:
            vals = [Lazy(lambda a=a: self.operand(a, dot, scope, where)) for a in args]
            if has_piped:
                vals.append(Lazy(lambda: piped))
        else:
            vals = [self.operand(a, dot, scope, where) for a in args] + ([piped] if has_piped else [])
        try:
            return FUNCTIONS[fn](*vals)
        except RenderError:
            raise
        except TypeError as e:
            raise RenderError(f"{where}: {fn}: wrong arguments ({e})") from None

    def pipeline(self, p: Pipeline, dot: Any, scope: Scope) -> Any:
        value, has = None, False
        for cmd in p.cmds:
            head, args = cmd[0], cmd[1:]
            if head[0] == "ident" and head[1] not in ("true", "false", "nil"):
                value = self.call(head[1], args, dot, scope, p.where, value, has)
            else:
                if args or has:
                    raise RenderError(f"{p.where}: {head[1]!r} is not a function")
                value = self.operand(head, dot, scope, p.where)
            has = True
        if p.decl:
            if len(p.decl) != 1:
                raise RenderError(f"{p.where}: too many variables")
            scope.set(p.decl[0], value)
            return None
        return value

    def include(self, name: str, data: Any, where: str) -> str:
        if name not in self.defines:
            raise RenderError(f"{where}: no template {name!r}")
        self.depth += 1
        if self.depth > 100:
            raise RenderError(f"{where}: include nested too deep")
        try:
            return self.execute(self.defines[name], data, Scope(data))
        finally:
            self.depth -= 1

    def execute(self, nodes: list[Node], dot: Any, scope: Scope) -> str:
        out: list[str] = []
        for n in nodes:
            if isinstance(n, Text):
                out.append(n.text)
            elif isinstance(n, Action):
                v = self.pipeline(n.pipe, dot, scope)
                if not n.pipe.decl:
                    out.append(go_str(v))
            elif isinstance(n, If):
                scope.push()
                try:
                    for pipe, body in n.branches:
                        if truth(self.pipeline(pipe, dot, scope)):
                            out.append(self.execute(body, dot, scope))
                            break
                    else:
                        out.append(self.execute(n.otherwise, dot, scope))
                finally:
                    scope.pop()
            elif isinstance(n, With):
                scope.push()
                try:
                    v = self.pipeline(Pipeline([], n.pipe.cmds, n.pipe.where), dot, scope)
                    if n.pipe.decl:
                        scope.set(n.pipe.decl[0], v)
                    out.append(self.execute(n.body, v, scope) if truth(v) else self.execute(n.otherwise, dot, scope))
                finally:
                    scope.pop()
            elif isinstance(n, Range):
                out.append(self.range(n, dot, scope))
        return "".join(out)

    def range(self, n: Range, dot: Any, scope: Scope) -> str:
        v = self.pipeline(Pipeline([], n.pipe.cmds, n.pipe.where), dot, scope)
        if v is None or not truth(v):
            return self.execute(n.otherwise, dot, scope)
        if isinstance(v, dict):
            pairs = [(k, v[k]) for k in sorted(v)]
        elif isinstance(v, list):
            pairs = list(enumerate(v))
        else:
            raise RenderError(f"{n.pipe.where}: range over a {type(v).__name__}")
        out = []
        for k, x in pairs:
            scope.push()
            try:
                if len(n.pipe.decl) == 1:
                    scope.set(n.pipe.decl[0], x)
                elif len(n.pipe.decl) == 2:
                    scope.set(n.pipe.decl[0], k)
                    scope.set(n.pipe.decl[1], x)
                out.append(self.execute(n.body, x, scope))
            finally:
                scope.pop()
        return "".join(out)


# ---------------------------------------------------------------------------------------------
# The chart

# Helm's install order (pkg/release/util/kind_sorter.go), for the kinds a chart like this has;
# kinds not listed go last, as in Helm.
INSTALL_ORDER = [
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget", "ServiceAccount",
    "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler",
    "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
]


def merge_values(base: dict, over: dict) -> dict:
    """Helm's coalescing of a values file onto the chart's: maps merge, null deletes a key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_values(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise RenderError(f"{path}: not a mapping")
    return data


def chart_object(chart: Path) -> dict:
    meta = load_yaml(chart / "Chart.yaml")
    # .Chart's fields are Go struct fields: name -> Name, appVersion -> AppVersion.
    return {k[0].upper() + k[1:]: v for k, v in meta.items()}


def render(chart: Path = CHART, overlays: list[Path] | None = None, release: str = RELEASE,
           namespace: str = "default", extra_values: dict | None = None) -> tuple[list[tuple[str, str]], str]:
    """The chart's manifests as (template path, document ending in one newline) in Helm's
    install order, and NOTES.txt."""
    values = load_yaml(chart / "values.yaml")
    for o in overlays or []:
        values = merge_values(values, load_yaml(o))
    if extra_values:
        values = merge_values(values, extra_values)
    top = {
        "Values": as_float64(values),
        "Chart": chart_object(chart),
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": True,
                    "IsUpgrade": False, "Revision": 1},
    }
    defines: dict[str, list[Node]] = {}
    parsed: list[tuple[str, list[Node]]] = []
    for path in sorted((chart / "templates").iterdir()):
        if path.is_file():
            name = f"{top['Chart']['Name']}/templates/{path.name}"
            parsed.append((name, parse(path.read_text(), name, defines)))
    r = Renderer(defines)
    docs: list[tuple[str, str]] = []
    notes = ""
    for name, nodes in parsed:
        base = name.rsplit("/", 1)[1]
        text = r.execute(nodes, top, Scope(top))
        if base.startswith("_"):
            continue
        if base == "NOTES.txt":
            notes = text
            continue
        for doc in re.split(r"(?m)^---[ \t]*$", text):
            if doc.strip():
                docs.append((name, doc.strip("\n") + "\n"))

    def order(item: tuple[str, str]) -> int:
        kind = (yaml.safe_load(item[1]) or {}).get("kind", "")
        return INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)

    docs.sort(key=order)  # stable: file order within a kind, as Helm
    return docs, notes


def manifest_text(docs: list[tuple[str, str]], overlays: list[Path]) -> str:
    """The checked-in form: `helm template`'s layout under a header that says how it was made."""
    rel = [str(o.relative_to(DEPLOY.parent)) for o in overlays]
    source = "values.yaml" + "".join(f" + {r}" for r in rel)
    head = (
        f"# Rendered from deploy/helm/embed ({source}), release name {RELEASE!r}.\n"
        "# Do not edit: change the chart and run `.venv/bin/python deploy/render_chart.py --write`.\n"
    )
    return head + "".join(f"---\n# Source: {name}\n{doc}" for name, doc in docs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", "--values", type=Path, action="append", default=[], help="values overlay (repeatable)")
    ap.add_argument("--release", default=RELEASE)
    ap.add_argument("--notes", action="store_true", help="print NOTES.txt instead of the manifests")
    ap.add_argument("--write", action="store_true", help="regenerate the files in deploy/manifests/")
    args = ap.parse_args()
    try:
        if args.write:
            MANIFESTS.mkdir(exist_ok=True)
            for overlays, out in RENDERS:
                docs, _ = render(overlays=overlays)
                out.write_text(manifest_text(docs, overlays))
                print(f"wrote {out.relative_to(DEPLOY.parent)} ({len(docs)} objects)")
            return 0
        docs, notes = render(overlays=[p.resolve() for p in args.values], release=args.release)
    except RenderError as e:
        print(f"render_chart: {e}", file=sys.stderr)
        return 1
    if args.notes:
        sys.stdout.write(notes)
    else:
        sys.stdout.write("".join(f"---\n# Source: {name}\n{doc}" for name, doc in docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
