"""`calculator`: arithmetic, parsed with Python's own parser and evaluated node by node, never `eval`."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from parley.tools.base import Tool, ToolFailed, ToolSpec

Number = int | float

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000  # 9**9**9 would keep a core busy for minutes and fill memory
MAX_INT_DIGITS = 4000

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "min": min,
    "max": max,
}
_CONSTANTS: dict[str, Number] = {"pi": math.pi, "e": math.e}


class Calculator(Tool):
    spec = ToolSpec(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly: + - * / // % ** and parentheses, the constants pi "
            "and e, and the functions " + ", ".join(_FUNCTIONS) + ". Example: (2 + 3) * sqrt(16)."
        ),
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "the expression to evaluate"}},
            "required": ["expression"],
        },
    )

    async def run(self, arguments: dict[str, Any]) -> str:
        return str(evaluate(str(arguments["expression"])))


def evaluate(expression: str) -> Number:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolFailed(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolFailed(f"not an arithmetic expression: {expression!r}") from None
    try:
        return _value(tree.body)
    except ZeroDivisionError:
        raise ToolFailed("division by zero") from None
    except (OverflowError, ValueError) as exc:
        raise ToolFailed(f"cannot compute: {exc}") from None


def _value(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_value(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ToolFailed(f"exponents are limited to {MAX_EXPONENT}")
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        if node.keywords:
            raise ToolFailed("functions take positional arguments only")
        return _checked(_FUNCTIONS[node.func.id](*(_value(argument) for argument in node.args)))
    shown = ast.unparse(node)
    raise ToolFailed(f"not allowed in an expression: {shown!r} (numbers, operators, pi, e and the listed functions)")


def _checked(value: Any) -> Number:
    if isinstance(value, complex):
        raise ToolFailed("the result is a complex number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_DIGITS * 3.33:
        raise ToolFailed(f"the result has more than {MAX_INT_DIGITS} digits")
    result: Number = value
    return result
