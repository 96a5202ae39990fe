"""What the twin "says": reply lengths, deterministic text and schema-valid tool calls.

The twin has no model, so the content layer decides a reply entirely before the engine runs
it: the exact token ids (handed to the engine as predetermined output), the finish reason,
the visible text and tool calls, and what each token shows when streamed.

Determinism: everything is drawn from a ``random.Random`` seeded by the server seed, the
request's own ``seed`` and a digest of the prompt ids, so the same request always gets the
same reply and a rerun of a benchmark is reproducible.

Length distribution (documented because benchmarks depend on it): a plain answer has a
log-normal body length with median 160 tokens and sigma 0.8 (about 5 % above 600 tokens),
clipped to [1, 4096]; a tool-call turn has a short "thought" (median 40, sigma 0.6, clipped
to [1, 512]) before the call. ``min_tokens`` lengthens the body (the end-of-turn token
cannot come earlier), ``max_tokens`` cuts the reply (finish ``"length"``), and
``ignore_eos`` makes the reply exactly ``max_tokens`` tokens of prose, which is what load
generators (``max_tokens = min_tokens = n, ignore_eos``) rely on.

Tool turns: a conversation (keyed by its first two non-assistant messages) gets a turn
budget of 2 to 6 tool calls; while fewer assistant tool-call messages are in the history the
reply is a tool call, afterwards a plain answer, so agent loops terminate. ``tool_choice``
``"none"`` forces an answer, ``"required"`` or a named function forces a call.
"""

from __future__ import annotations

import hashlib
import json
import random
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from thunder_middleware.twin.chat_template import render_message, render_tool_call
from thunder_middleware.twin.json_schema_args import sample_arguments
from thunder_middleware.twin.tokenizer import TwinTokenizer, chunk_id, split_chunks

FinishReason = Literal["stop", "length", "tool_calls"]

# fmt: off
_WORDS = (
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "as", "was",
    "be", "by", "this", "are", "or", "from", "at", "an", "but", "not", "have", "we", "can",
    "file", "test", "code", "path", "line", "call", "tool", "step", "run", "fix", "bug", "next",
    "then", "now", "read", "edit", "find", "use", "make", "will", "need", "data", "list", "map",
    "key", "type", "case", "lock", "task", "plan", "log", "cache", "time", "so", "all", "one",
    "two", "new", "old", "more", "last", "each", "when", "if", "same", "its", "our", "out",
    "up", "down", "into", "also", "only", "just", "done", "good", "safe"
)
# fmt: on
_SHORT_WORDS = tuple(word for word in _WORDS if len(word) <= 3)

PLAIN_MEDIAN, PLAIN_SIGMA, PLAIN_RANGE = 160.0, 0.8, (1, 4096)
THOUGHT_MEDIAN, THOUGHT_SIGMA, THOUGHT_RANGE = 40.0, 0.6, (1, 512)
TOOL_BUDGET_RANGE = (2, 6)


def _prose_vocabulary() -> dict[str, tuple[str, ...]]:
    """Token forms of the prose generator, each exactly one chunk and with a distinct id
    (a form that is two chunks, or whose id collides with an earlier one, is left out)."""
    used: set[int] = set()

    def keep(forms: list[str]) -> tuple[str, ...]:
        kept = []
        for form in forms:
            if len(split_chunks(form)) == 1 and chunk_id(form) not in used:
                used.add(chunk_id(form))
                kept.append(form)
        return tuple(kept)

    return {
        "newline": keep(["\n"]),
        "line_start": keep([w.capitalize() for w in _WORDS]),
        "sentence_start": keep([" " + w.capitalize() for w in _WORDS]),
        "middle": keep([" " + w for w in _WORDS]),
        "comma": keep([" " + w + "," for w in _SHORT_WORDS]),
        "end": keep([" " + w + "." for w in _SHORT_WORDS]),
        "lone": keep([w.capitalize() + "." for w in _SHORT_WORDS]),
    }


PROSE_FORMS = _prose_vocabulary()


def register_prose(tokenizer: TwinTokenizer) -> None:
    tokenizer.register(form for forms in PROSE_FORMS.values() for form in forms)


def prose_pieces(rng: random.Random, count: int) -> list[str]:
    """``count`` one-token pieces of sentence-like text, never ending in whitespace."""
    forms = PROSE_FORMS
    pieces: list[str] = []
    line_start = True
    while len(pieces) < count:
        length = min(rng.randint(4, 14), count - len(pieces))
        for index in range(length):
            last = index == length - 1
            if index == 0 and last:
                piece = rng.choice(forms["lone"] if line_start else forms["end"])
            elif index == 0:
                piece = rng.choice(forms["line_start"] if line_start else forms["sentence_start"])
            elif last:
                piece = rng.choice(forms["end"])
            elif rng.random() < 0.08:
                piece = rng.choice(forms["comma"])
            else:
                piece = rng.choice(forms["middle"])
            pieces.append(piece)
            line_start = False
        if count - len(pieces) >= 3 and rng.random() < 0.2:
            pieces += ["\n", "\n"]
            line_start = True
    return pieces


@dataclass(frozen=True)
class ToolCallDelta:
    """What one streamed token adds to a tool call (OpenAI ``delta.tool_calls[i]``)."""

    index: int
    arguments: str
    id: str | None = None  # set on the call's first token only, with the name
    name: str | None = None


@dataclass(frozen=True)
class TokenPiece:
    text: str = ""
    tool_call: ToolCallDelta | None = None


@dataclass(frozen=True)
class PlannedToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True)
class GenerationLimits:
    """Resolved limits: ``max_tokens`` already capped by the model length."""

    max_tokens: int
    min_tokens: int = 0
    ignore_eos: bool = False


@dataclass(frozen=True)
class ReplyPlan:
    token_ids: list[int]
    pieces: list[TokenPiece]  # one per token id: what streaming shows for it
    finish_reason: FinishReason
    content: str | None
    tool_calls: tuple[PlannedToolCall, ...] = field(default=())


@dataclass(frozen=True)
class ChatRequestView:
    """The parts of a chat request that shape the reply (plain data, no pydantic)."""

    messages: Sequence[Mapping[str, Any]]
    tools: Sequence[Mapping[str, Any]] = ()
    tool_choice: Any = "auto"  # "auto" | "none" | "required" | {"function": {"name"}}


def request_rng(
    server_seed: int, request_seed: int | None, prompt_ids: Sequence[int]
) -> random.Random:
    digest = hashlib.blake2b(array("q", prompt_ids).tobytes(), digest_size=16).hexdigest()
    return random.Random(f"{server_seed}:{request_seed}:{digest}")


def _lognormal_length(
    rng: random.Random, median: float, sigma: float, bounds: tuple[int, int]
) -> int:
    value = round(rng.lognormvariate(0.0, sigma) * median)
    return max(bounds[0], min(bounds[1], value))


def conversation_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """Identifies a conversation across its turns: its first two non-assistant messages."""
    head = [m for m in messages if m.get("role") not in ("assistant", "tool")][:2]
    text = "".join(render_message(m) for m in head)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def tool_turn_budget(
    server_seed: int, key: str, turns: tuple[int, int] = TOOL_BUDGET_RANGE
) -> int:
    return random.Random(f"{server_seed}:budget:{key}").randint(*turns)


def _tool_turns_so_far(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))


def _choose_tool(view: ChatRequestView, rng: random.Random) -> Mapping[str, Any] | None:
    """The function to call now, or None for a plain answer."""
    functions = [t.get("function") or {} for t in view.tools if isinstance(t, Mapping)]
    choice = view.tool_choice
    if not functions or choice == "none":
        return None
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        return next((f for f in functions if f.get("name") == wanted), None)
    if choice != "required":
        return None  # "auto" is decided by the caller's budget check
    return rng.choice(functions)


class ContentPlanner:
    """Plans replies for one server: owns the tokenizer's prose table and the seed."""

    def __init__(
        self,
        tokenizer: TwinTokenizer,
        seed: int = 0,
        tool_turns: tuple[int, int] = TOOL_BUDGET_RANGE,
    ) -> None:
        if not 0 <= tool_turns[0] <= tool_turns[1]:
            raise ValueError(f"tool turns must be a range 0 <= low <= high, got {tool_turns}")
        self.tokenizer = tokenizer
        self.seed = seed
        self.tool_turns = tool_turns
        register_prose(tokenizer)

    def _prose(self, rng: random.Random, count: int) -> tuple[list[int], list[TokenPiece]]:
        pieces = prose_pieces(rng, count)
        return [chunk_id(p) for p in pieces], [TokenPiece(text=p) for p in pieces]

    def _finish(
        self,
        ids: list[int],
        pieces: list[TokenPiece],
        eos_id: int,
        limits: GenerationLimits,
        reason: FinishReason,
        tool_calls: tuple[PlannedToolCall, ...] = (),
    ) -> ReplyPlan:
        """Append the end-of-turn token, then cut at ``max_tokens``."""
        ids, pieces = [*ids, eos_id], [*pieces, TokenPiece()]
        if len(ids) > limits.max_tokens:
            ids, pieces = ids[: limits.max_tokens], pieces[: limits.max_tokens]
            text = "".join(p.text for p in pieces)
            return ReplyPlan(ids, [TokenPiece(text=p.text) for p in pieces], "length", text)
        text = "".join(p.text for p in pieces)
        content = text if text or not tool_calls else None
        return ReplyPlan(ids, pieces, reason, content, tool_calls)

    def plan_completion(
        self, prompt_ids: Sequence[int], limits: GenerationLimits, request_seed: int | None = None
    ) -> ReplyPlan:
        rng = request_rng(self.seed, request_seed, prompt_ids)
        if limits.ignore_eos:
            ids, pieces = self._prose(rng, limits.max_tokens)
            return ReplyPlan(ids, pieces, "length", "".join(p.text for p in pieces))
        body = max(
            _lognormal_length(rng, PLAIN_MEDIAN, PLAIN_SIGMA, PLAIN_RANGE), limits.min_tokens
        )
        ids, pieces = self._prose(rng, min(body, limits.max_tokens))
        return self._finish(ids, pieces, self.tokenizer.eos_token_id, limits, "stop")

    def plan_chat(
        self,
        prompt_ids: Sequence[int],
        view: ChatRequestView,
        limits: GenerationLimits,
        request_seed: int | None = None,
    ) -> ReplyPlan:
        rng = request_rng(self.seed, request_seed, prompt_ids)
        eos = self.tokenizer.end_of_turn_id
        if limits.ignore_eos:
            ids, pieces = self._prose(rng, limits.max_tokens)
            return ReplyPlan(ids, pieces, "length", "".join(p.text for p in pieces))
        function = _choose_tool(view, rng)
        if function is None and view.tool_choice in ("auto", None) and view.tools:
            key = conversation_key(view.messages)
            budget = tool_turn_budget(self.seed, key, self.tool_turns)
            if _tool_turns_so_far(view.messages) < budget:
                function = rng.choice([t.get("function") or {} for t in view.tools])
        if function is None:
            body = _lognormal_length(rng, PLAIN_MEDIAN, PLAIN_SIGMA, PLAIN_RANGE)
            body = max(body, limits.min_tokens)
            ids, pieces = self._prose(rng, min(body, limits.max_tokens))
            return self._finish(ids, pieces, eos, limits, "stop")
        thought = _lognormal_length(rng, THOUGHT_MEDIAN, THOUGHT_SIGMA, THOUGHT_RANGE)
        call = self._tool_call(function, rng)
        call_ids, call_pieces = self._tool_call_tokens(call)
        thought = max(thought, limits.min_tokens - len(call_ids))
        ids, pieces = self._prose(rng, min(thought, limits.max_tokens))
        return self._finish(
            ids + call_ids, pieces + call_pieces, eos, limits, "tool_calls", (call,)
        )

    def _tool_call(self, function: Mapping[str, Any], rng: random.Random) -> PlannedToolCall:
        name = str(function.get("name", "tool"))
        parameters = function.get("parameters")
        arguments = sample_arguments(parameters if isinstance(parameters, Mapping) else None, rng)
        call_id = f"chatcmpl-tool-{rng.getrandbits(128):032x}"
        return PlannedToolCall(id=call_id, name=name, arguments=json.dumps(arguments))

    def _tool_call_tokens(self, call: PlannedToolCall) -> tuple[list[int], list[TokenPiece]]:
        """The call's ids as the chat template renders it, and the streamed deltas: the
        first token opens the call (id, name), the others carry equal slices of the
        arguments, so the deltas concatenate to exactly ``call.arguments``."""
        ids = self.tokenizer.encode(render_tool_call(call.name, call.arguments))
        slices = len(ids) - 1  # >= 2: the open and close markers are tokens of their own
        size = -(-len(call.arguments) // slices)
        parts = [call.arguments[i * size : (i + 1) * size] for i in range(slices)]
        pieces = [TokenPiece(tool_call=ToolCallDelta(0, "", id=call.id, name=call.name))]
        pieces += [TokenPiece(tool_call=ToolCallDelta(0, part)) for part in parts]
        return ids, pieces
