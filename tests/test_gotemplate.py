"""The Go-template subset renderer used to render Ollama Modelfile TEMPLATEs."""

from __future__ import annotations

import pytest

from thinktune.errors import GoTemplateError
from thinktune.export.gotemplate import render

MESSAGES = [
    {"Role": "system", "Content": "S"},
    {"Role": "user", "Content": "hi"},
    {"Role": "assistant", "Content": "yo", "Thinking": "hmm"},
    {"Role": "user", "Content": "q2"},
]

# The shape of Ollama's own ChatML templates: raw text with newlines, trim markers, $last computed with slice.
CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def test_ollama_style_chatml_template():
    out = render(CHATML, {"System": "S", "Messages": MESSAGES})
    assert out == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n"
    )


def test_trim_markers_trim_all_whitespace_but_only_on_their_side():
    assert render("a  \n\t {{- 1 -}} \n b", {}) == "a1b"
    assert render("a  {{ 1 -}}  b", {}) == "a  1b"
    assert render("a  {{- 1 }}  b", {}) == "a1  b"
    # "-3" without a space is a number, not a trim marker
    assert render("a {{-3}} b", {}) == "a -3 b"


def test_if_else_if_else_and_truthiness():
    tpl = '{{ if .A }}A{{ else if eq .B "x" "y" }}B{{ else }}C{{ end }}'
    assert render(tpl, {"A": "non-empty", "B": ""}) == "A"
    assert render(tpl, {"A": "", "B": "y"}) == "B"  # eq with several arguments: equal to any
    assert render(tpl, {"A": [], "B": "z"}) == "C"
    assert render("{{ if 0 }}x{{ else }}zero is false{{ end }}", {}) == "zero is false"
    assert render("{{ if .Missing }}x{{ else }}missing map key is the zero value{{ end }}", {}).startswith(
        "missing"
    )


def test_range_variables_scoping_and_else():
    tpl = "{{ range $i, $m := .L }}{{ $i }}={{ $m.N }}{{ $.Sep }}{{ end }}"
    assert render(tpl, {"L": [{"N": "a"}, {"N": "b"}], "Sep": ";"}) == "0=a;1=b;"
    assert render("{{ range .L }}{{ . }}{{ else }}empty{{ end }}", {"L": []}) == "empty"
    assert render("{{ range .L }}{{ .N }}{{ end }}", {"L": [{"N": 1}, {"N": 2}]}) == "12"
    # a variable declared inside the loop does not leak out of it
    with pytest.raises(GoTemplateError):
        render("{{ range .L }}{{ $x := 1 }}{{ end }}{{ $x }}", {"L": [1]})


def test_functions_and_literals():
    assert render('{{ "a\\n\\t\\"b\\"" }}', {}) == 'a\n\t"b"'
    assert render("{{ `raw\\n` }}", {}) == "raw\\n"
    assert render("{{ len .L }} {{ slice .L 1 }} {{ index .L 0 }}", {"L": [7, 8, 9]}) == "3 [8 9] 7"
    assert render("{{ and 1 0 }} {{ or 0 2 }} {{ not true }} {{ ne 1 2 }}", {}) == "0 2 false true"
    assert render("{{ .A | print }}", {"A": "piped"}) == "piped"
    assert render("x{{/* a comment */}}y", {}) == "xy"
    assert render("{{ $v := .A }}{{ $v = print $v $v }}{{ $v }}", {"A": "ab"}) == "abab"


def test_fields_of_nested_maps_and_objects():
    class Msg:
        Role = "user"

    assert render("{{ .M.Role }}", {"M": Msg()}) == "user"
    assert render("{{ .M.Inner.X }}", {"M": {"Inner": {"X": 5}}}) == "5"


@pytest.mark.parametrize(
    "tpl",
    [
        "{{ with .A }}x{{ end }}",
        '{{ template "x" }}',
        "{{ if .A }}unclosed",
        "{{ end }}",
        "{{ unknownfunc 1 }}",
        "{{ .A",
    ],
)
def test_unsupported_or_broken_templates_are_errors(tpl):
    with pytest.raises(GoTemplateError):
        render(tpl, {"A": 1})
