"""All reasoning markup lives in thinktune.data.reasoning: the streamed split (chat's display) agrees with the
split of the whole text (every record) on every shape a stream can decide without looking ahead, however the
text is cut into chunks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from thinktune.data.reasoning import ReasoningSplitter, split_reasoning, think_block

# Text without markup: what a model writes inside and after the think block.
plain = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=60)


@st.composite
def generations(draw):
    """(prompt_opens_think, text) of the shapes a stream can split as it goes."""
    reasoning, answer = draw(plain), draw(plain)
    shape = draw(st.sampled_from(["prompt opened", "model opens", "closed by model", "no think"]))
    if shape == "prompt opened":
        return True, f"{reasoning}</think>{answer}"
    if shape == "model opens":
        return False, f"<think>{reasoning}</think>{answer}"
    if shape == "closed by model":
        return False, f"{think_block(reasoning, force=True)}{answer}"
    return False, answer


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(len(text), c) for c in cuts})
    pieces, start = [], 0
    for p in points:
        pieces.append(text[start:p])
        start = p
    return [*pieces, text[start:]]


@given(generations(), st.lists(st.integers(min_value=0, max_value=140), max_size=12))
def test_streamed_split_agrees_with_the_whole_text_split(generation, cuts):
    opens, text = generation
    splitter = ReasoningSplitter(opens)
    streamed = {"reasoning": "", "answer": ""}
    for chunk in _chunks(text, cuts):
        for kind, piece in splitter.feed(chunk):
            streamed[kind] += piece
    for kind, piece in splitter.finish():
        streamed[kind] += piece
    reasoning, answer, _, _ = split_reasoning(text, opens)
    assert streamed["reasoning"].strip() == reasoning
    assert streamed["answer"].strip() == answer


def test_a_preamble_before_think_is_known_only_to_the_whole_text_split():
    """A model that writes text before opening <think> is split correctly in the record (the preamble belongs to
    the answer), while a stream, which cannot look ahead, shows it as it comes: the record is what is kept."""
    text = "Sure. <think>why</think>Because."
    assert split_reasoning(text) == ("why", "Sure.\n\nBecause.", True, True)
    splitter = ReasoningSplitter(False)
    pieces = splitter.feed(text) + splitter.finish()
    assert "".join(t for k, t in pieces if k == "reasoning") == ""
