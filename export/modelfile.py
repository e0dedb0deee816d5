"""The Ollama Modelfile: a Go text/template TEMPLATE derived from the model's Jinja chat template, stop
parameters for the end-of-turn tokens, num_ctx, and a byte-for-byte check of the TEMPLATE against the Jinja
render that training used, executed by Go's own text/template (export/gotemplate, the engine Ollama uses).

How the TEMPLATE is derived: common/chat_template.derive renders the Jinja template on probe conversations
whose contents are sentinels and reads what each role's messages are wrapped in (ChatML, Llama 3, Gemma,
Phi-3, ...); go_template writes those wraps as a Go template. A template outside that shape, or one that edits
message contents (e.g. `| trim`), cannot be expressed this way: the probes or the verification catch it and the
export stops with the difference.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

from common.chat_template import TEMPLATE_REFUSALS, Render, Wraps
from common.errors import UserError

GO_DIR = Path(__file__).resolve().parent / "gotemplate"


def _go_str(s: str) -> str:
    """A Go interpreted string literal (JSON's escapes are a subset of Go's; astral characters stay raw)."""
    return json.dumps(s, ensure_ascii=False)


def _by_role(table: dict[str, str]) -> str:
    """{{- if eq .Role "system" }}{{ "..." }}{{- else if ... }}{{- end }}, skipping empty strings."""
    branches = [(role, text) for role, text in table.items() if text]
    if not branches:
        return ""
    out = []
    for k, (role, text) in enumerate(branches):
        out.append(f'{{{{- {"if" if k == 0 else "else if"} eq .Role "{role}" }}}}{{{{ {_go_str(text)} }}}}')
    return "\n".join(out) + "\n{{- end }}"


def go_template(w: Wraps) -> str:
    """The Ollama TEMPLATE: every line starts with `{{-`, so the layout adds no characters; all text is in
    quoted literals."""
    if w.fold is not None:
        return _go_template_folded(w)
    first_other = {role: w.opening + w.prefix[role] for role in ("user", "assistant")}
    lines = ["{{- range $i, $m := .Messages }}",
             "{{- if eq $i 0 }}",
             f'{{{{- if eq .Role "system" }}}}{{{{ {_go_str(w.first_system)} }}}}',
             "{{- else }}",
             _by_role(first_other),
             "{{- end }}",
             "{{- else }}",
             _by_role(w.prefix),
             "{{- end }}",
             "{{- .Content }}",
             _by_role(w.suffix)]
    if w.generation:
        lines.append('{{- if and (eq (len (slice $.Messages $i)) 1) (ne .Role "assistant") }}'
                     f"{{{{ {_go_str(w.generation)} }}}}{{{{- end }}}}")
    lines.append("{{- end }}")
    return "\n".join(line for line in lines if line)


def _go_template_folded(w: Wraps) -> str:
    """The TEMPLATE of a template that folds an opening system message into the first or last user message: the
    system content is taken out of the loop, and written inside that user turn, ahead of its content."""
    f = w.fold
    lines = ['{{- $sys := "" }}{{- $hasSys := false }}{{- $target := -1 }}{{- $start := 0 }}',
             ('{{- range $i, $m := .Messages }}{{- if and (eq $i 0) (eq .Role "system") }}'
             '{{- $sys = .Content }}{{- $hasSys = true }}{{- $start = 1 }}{{- end }}{{- end }}'),
             '{{- range $i, $m := .Messages }}{{- if eq .Role "user" }}'
             + ('{{- if eq $target -1 }}{{- $target = $i }}{{- end }}' if f.into == "first" else '{{- $target = $i }}')
             + '{{- end }}{{- end }}',
             "{{- range $i, $m := .Messages }}",
             "{{- if not (and (eq $i 0) $hasSys) }}",
             f"{{{{- if eq $i $start }}}}{{{{ {_go_str(w.opening)} }}}}{{{{- end }}}}" if w.opening else "",
             _by_role(w.prefix),
             "{{- if and (eq $i $target) " + ("$hasSys" if f.empty else '(ne $sys "")') + " }}"
             + (f"{{{{ {_go_str(f.before)} }}}}" if f.before else "") + "{{- $sys }}"
             + (f"{{{{ {_go_str(f.after)} }}}}" if f.after else "") + "{{- end }}",
             "{{- .Content }}",
             _by_role(w.suffix)]
    if w.generation:
        lines.append('{{- if and (eq (len (slice $.Messages $i)) 1) (ne .Role "assistant") }}'
                     f"{{{{ {_go_str(w.generation)} }}}}{{{{- end }}}}")
    lines += ["{{- end }}", "{{- end }}"]
    return "\n".join(line for line in lines if line)


def verification_cases() -> list[list[dict]]:
    """At least 20 conversations: with and without system, multi-turn, empty content, characters that mean
    something to Go or Jinja, newlines, non-ASCII, tool calls and reasoning in curate's text form; ending with
    the user (a serving prompt) or the assistant (a training example)."""
    sys_, u, a = "system", "user", "assistant"

    def conv(*pairs):
        return [{"role": r, "content": c} for r, c in pairs]

    cases = [
        conv((u, "Hello")),
        conv((u, "Hello"), (a, "Hi! How can I help?")),
        conv((sys_, "You triage support messages."), (u, "My invoice is wrong.")),
        conv((sys_, "You triage support messages."), (u, "My invoice is wrong."), (a, '{"category": "billing"}')),
        conv((u, "one"), (a, "two"), (u, "three")),
        conv((u, "one"), (a, "two"), (u, "three"), (a, "four")),
        conv((sys_, "Be brief."), (u, "a"), (a, "b"), (u, "c"), (a, "d"), (u, "e")),
        conv((sys_, "Be brief."), (u, "a"), (a, "b"), (u, "c"), (a, "d"), (u, "e"), (a, "f")),
        conv((u, "")),
        conv((u, ""), (a, "")),
        conv((sys_, ""), (u, "empty system")),
        conv((sys_, "multi\nline\n\nsystem"), (u, "line one\nline two\n"), (a, "\n leading and trailing \n")),
        conv((u, "Go: {{ .Content }} {{- end }} and Jinja: {% if x %}{{ y }}{% endif %}"), (a, "{{ \"quoted\" }}")),
        conv((u, "backslash \\n and quote \" and tab\t"), (a, "ok\\")),
        conv((u, "naïve café, 日本語, emoji 🎉"), (a, "ünïcödé ✓")),
        conv((u, "<|im_start|> and <|im_end|> typed as text")),
        conv((sys_, "You answer in JSON."), (u, "Classify: refund not received"), (a, '{"category": "refund", "priority": "high"}'),
             (u, "And this: app crashes on login")),
        conv((u, "x" * 2000)),
        conv((sys_, "S"), (u, "U")),
        conv((u, " spaces "), (a, "  ")),
        conv((sys_, "\t"), (u, "\r\nwindows line endings\r\n"), (a, "done")),
        conv((u, "What is 2+2?"), (a, "4"), (u, "And 3+3?"), (a, "6"), (u, "And 4+4?"), (a, "8"), (u, "Thanks")),
        conv((sys_, "Be brief."), (u, "a"), (a, "b"), (sys_, "From now on answer in French."), (u, "c")),
        conv((u, "a"), (a, "b"), (sys_, "A system turn later in the chat."), (u, "c"), (a, "d")),
    ]
    return cases + tool_cases()


def tool_cases() -> list[list[dict]]:
    """Tool-calling and reasoning conversations in the text form curate trains them in (curate/tools.py,
    curate/formats.fold_reasoning): specs in the system turn, calls in assistant turns, results in user turns."""
    spec = '{"description": "Open a ticket.", "name": "create_ticket", "parameters": {"properties": {"category": {"type": "string"}}, "type": "object"}}'
    system = ("You are a support agent.\n\n# Tools\nYou may call one or more of these tools. Their specifications:\n"
              f"<tools>\n{spec}\n</tools>\nTo call a tool, answer with <tool_call>\n{{\"name\": <tool name>, "
              "\"arguments\": <JSON object>}\n</tool_call>; each result comes back as <tool_response>...</tool_response>.")
    call = '<tool_call>\n{"name": "create_ticket", "arguments": {"category": "billing"}}\n</tool_call>'
    result = '<tool_response>\n{"ticket": "T-10422", "status": "open"}\n</tool_response>'
    return [
        [{"role": "system", "content": system}, {"role": "user", "content": "I was charged twice."}],
        [{"role": "system", "content": system}, {"role": "user", "content": "I was charged twice."},
         {"role": "assistant", "content": call}, {"role": "user", "content": result},
         {"role": "assistant", "content": "I have opened ticket T-10422 for you."}],
        [{"role": "user", "content": "Is 17 prime?"},
         {"role": "assistant", "content": "<think>\n17 has no divisor between 2 and 4.\n</think>\n\nYes."}],
    ]


def build_renderer() -> Path:
    """Compile export/gotemplate once (Go caches the build); a missing `go` is a one-line error with the fix."""
    go = shutil.which("go")
    if go is None:
        raise UserError("`go` not found: the Modelfile TEMPLATE is verified with Go's own text/template; "
                        "install Go (Debian/Ubuntu: apt-get install golang-go) and rerun")
    out = GO_DIR / "bin" / "gotemplate"
    out.parent.mkdir(exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:  # two processes (exports, test workers) build it at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_DIR, capture_output=True, text=True,
                              env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}, timeout=300)
    if proc.returncode != 0:
        raise UserError(f"building {GO_DIR} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return out


def go_render(binary: Path, template: str, cases: list[list[dict]], system: str = "") -> list[str]:
    req = {"template": template, "cases": [{"messages": c, "system": system} for c in cases]}
    proc = subprocess.run([str(binary)], input=json.dumps(req), capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise UserError(f"Go text/template rejected the generated TEMPLATE: {proc.stderr.strip()}")
    resp = json.loads(proc.stdout)
    errors = [e for e in resp["errors"] if e]
    if errors:
        raise UserError(f"Go text/template failed on the generated TEMPLATE: {errors[0]}")
    return resp["renders"]


def verify(binary: Path, template: str, render: Render) -> dict:
    """Render every case with Go and with the training-time Jinja render; any difference is an error with its diff.
    A case the chat template itself refuses (e.g. a later system turn) cannot be compared and is counted apart."""
    cases, expected = [], []
    refused = 0
    for c in verification_cases():
        try:
            expected.append(render(c, c[-1]["role"] != "assistant"))
            cases.append(c)
        except TEMPLATE_REFUSALS:
            refused += 1
    got = go_render(binary, template, cases)
    for case, want, have in zip(cases, expected, got):
        if want != have:
            diff = "\n".join(difflib.unified_diff(want.splitlines(keepends=False), have.splitlines(keepends=False),
                                                  "jinja (training)", "go (Ollama TEMPLATE)", lineterm=""))
            raise UserError(f"the Modelfile TEMPLATE renders {json.dumps(case, ensure_ascii=False)[:200]} differently "
                            f"from the chat template used in training:\n{diff or repr(want) + ' != ' + repr(have)}")
    tool_forms = sum(any(t in m["content"] for m in c for t in ("<tool_call>", "<tools>", "<think>")) for c in cases)
    return {"conversations": len(cases), "identical": len(cases), "refused_by_template": refused,
            "with_tool_calls_or_reasoning": tool_forms, "engine": "Go text/template (export/gotemplate)"}


def modelfile_text(source: str, template: str, stops: list[str], num_ctx: int, system: str, adapter: str = "") -> str:
    """FROM `source` (a path relative to the Modelfile, e.g. ./run-q4_k_m.gguf), ADAPTER `adapter` if given."""
    if '"""' in template or (system and '"""' in system):
        raise UserError('the TEMPLATE or export.system_prompt contains """, which a Modelfile cannot quote')
    lines = [f"FROM {source}"] + ([f"ADAPTER {adapter}"] if adapter else []) + [f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {_go_str(s)}" for s in stops]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def template_of(modelfile: str) -> str:
    """The TEMPLATE of a Modelfile as written (what `ollama create` reads), for verifying the file itself."""
    start = modelfile.index('TEMPLATE """') + len('TEMPLATE """')
    return modelfile[start:modelfile.index('"""', start)]

