"""export/report.html: files, sizes, times, doctor, Modelfile check, round trip per GGUF, side-by-side answers."""

from __future__ import annotations

from pathlib import Path

from common.report import esc, write_page
from export.kld import kind, threshold

SHOWN = ["field_accuracy", "valid_json", "exact_match", "rougeL", "chrf"]


def label(t: str) -> str:
    if t.endswith("-noimatrix"):
        return f"{t.removesuffix('-noimatrix')} GGUF without the importance matrix"
    return f"{t.removesuffix('+lora')} base GGUF + adapter GGUF" if t.endswith("+lora") else f"{t} GGUF"


def kld_section(gate: dict | None, imatrix: dict | None) -> str:
    """Per GGUF: size, KL divergence from the 16-bit model (mean, p99) and same top token, on every val token and on
    the answers alone, with and without the importance matrix, pass or fail."""
    if not gate or not gate.get("ran"):
        return "<h2>KL divergence gate</h2><p>Not run (export.kld_tokens is 0).</p>"
    head = ("<tr><th>GGUF</th><th>MiB</th><th>importance matrix</th><th>KLD mean</th><th>KLD p99</th><th>same top token</th>"
            "<th>answers: KLD mean</th><th>answers: same top</th><th>threshold (KLD, same top)</th><th>verdict</th></tr>")
    rows = []
    for t, r in sorted(gate["results"].items(), key=lambda kv: kv[0].replace("-noimatrix", "~")):
        a, ans = r["all"], r["answers"]
        limit = (threshold(gate["max_kld"], kind(t)), threshold(gate["min_same_top"], kind(t)))
        verdict = ("comparison" if "passed" not in r else
                   "<span class='up'>pass</span>" if r["passed"] else "<b class='down'>FAIL</b>")
        with_matrix = "yes" if r.get("imatrix") else "no"
        rows.append(f"<tr><td>{esc(label(t))}</td><td>{round(gate['bytes'].get(t, 0) / 2**20, 1)}</td><td>{with_matrix}</td>"
                    f"<td>{a['kld_mean']}</td><td>{a['kld_p99']}</td><td>{a['same_top']:.1%}</td>"
                    f"<td>{ans.get('kld_mean', '')}</td><td>{ans.get('same_top', 0):.1%}</td>"
                    f"<td>{limit[0]}, {limit[1]}</td><td>{verdict}</td></tr>")
    matrix = (f"<p>Importance matrix: {imatrix['rows']} train conversations ({imatrix['tokens']} tokens) through "
              f"llama-imatrix in {imatrix['seconds']} s; applied to the types of 4 bits and fewer.</p>" if imatrix else "")
    failed = "".join(f"<p class='down'>{esc(f)}</p>" for f in gate["failures"])
    return (f"<h2>KL divergence gate</h2><p>Every GGUF's next-token distribution against {esc(gate['reference'])} at "
            f"every position of {gate['conversations']} val conversations rendered with the chat template "
            f"({gate['seconds']} s); 'answers' is the last answer's tokens alone.</p>{failed}{matrix}<table>{head}{''.join(rows)}</table>")


def roundtrip_section(roundtrip: dict) -> str:
    head = ("<tr><th>model</th><th>exact match with HF</th><th>token agreement</th><th>same prompt tokens</th>"
            "<th>stopped at end of turn</th>" + "".join(f"<th>{k}</th>" for k in SHOWN) + "<th>seconds</th></tr>")
    hf = roundtrip["hf"]
    rows = [f"<tr><td>{esc(hf.get('model', 'merged HF'))} (transformers)</td><td>-</td><td>-</td><td>-</td><td>{hf['stopped_at_end_of_turn']}</td>"
            + "".join(f"<td>{hf['metrics'].get(k, '')}</td>" for k in SHOWN) + f"<td>{hf['seconds']}</td></tr>"]
    for t, r in roundtrip["gguf"].items():
        rows.append(f"<tr><td>{esc(label(t))}</td><td>{r['exact_match_with_hf']}</td><td>{r['token_agreement']}</td>"
                    f"<td>{r['same_prompt_tokens']}</td><td>{r['stopped_at_end_of_turn']}</td>"
                    + "".join(f"<td>{r['metrics'].get(k, '')}</td>" for k in SHOWN) + f"<td>{r['seconds']}</td></tr>")
    verdict = ("<p class='up'>passed</p>" if roundtrip["passed"]
               else "<p class='down'>FAILED: " + "<br>".join(esc(f) for f in roundtrip["failures"]) + "</p>")
    types = list(roundtrip["gguf"])
    samples = "".join("<tr>" + f"<td>{esc(s['prompt'][:200])}</td><td>{esc(s['reference'])}</td><td>{esc(s['hf'])}</td>"
                      + "".join(f"<td{'' if s[t] == s['hf'] else ' class=down'}>{esc(s[t])}</td>" for t in types) + "</tr>"
                      for s in roundtrip["samples"])
    return (f"<h2>GGUF round trip ({roundtrip['prompts']} val prompts, greedy, up to {roundtrip['max_new_tokens']} tokens)</h2>"
            f"{verdict}<table>{head}{''.join(rows)}</table>"
            "<p>Each GGUF (a base GGUF with the adapter GGUF applied, for the +lora rows) is prompted through the chat "
            "template embedded in it (llama.cpp); the trained model through transformers. Answers that differ from the "
            "trained model's are red.</p>"
            f"<table><tr><th>prompt</th><th>reference</th><th>trained (HF)</th>{''.join(f'<th>{esc(label(t))}</th>' for t in types)}</tr>{samples}</table>")


def adapter_section(out: Path, summary: dict) -> str:
    from export.catalog import adapters_on, table_html

    a = summary["adapter"]
    modelfile = (out / "Modelfile.adapter").read_text(encoding="utf-8")
    bases = "".join(f"<tr><td>{esc(t)}</td><td>{esc(p)}</td><td>{'reused' if t in a['bases_reused'] else 'written by this run'}</td></tr>"
                    for t, p in a["bases"].items())
    meta = a["metadata"]
    return f"""<h2>Adapter</h2>
<p><code>{esc(Path(a['gguf']).name)}</code>: {round(a['bytes'] / 2**20, 2)} MiB (general.type {esc(meta['type'])},
adapter.type {esc(meta['adapter_type'])}, alpha {meta['alpha']}, {meta['pairs']} A/B pairs, architecture
{esc(meta['architecture'])}), applied by llama.cpp / Ollama on the base GGUF of base id <code>{esc(a['base_id'])}</code>:</p>
<table><tr><th>base type</th><th>file</th><th></th></tr>{bases}</table>
<pre>{esc(modelfile)}</pre>
<h3>Adapters on this base</h3>{table_html(adapters_on(Path(a['base_dir'])))}"""


def write_report(out: Path, summary: dict, roundtrip: dict) -> None:
    stages = summary["stages"]
    files = "".join(f"<tr><td>{esc(t)}</td><td>{round(st['bytes'] / 2**20, 1)}</td><td>{st['seconds']}</td>"
                    f"<td>{st.get('peak_rss_mib', '')}</td><td>{'reused' if st.get('reused') else ''}</td></tr>"
                    for t, st in stages.items() if t != "merge")
    doctor = "".join(f"<tr><td>{esc(k)}</td><td>{'OK' if d['ok'] else 'PROBLEMS'}</td><td>{esc(str(d['end_of_turn']))} "
                     f"(id {d['end_of_turn_id']})</td><td>{d['eos_id']}</td></tr>" for k, d in summary["doctor"].items())
    modelfiles = "".join(f"<h3>{esc(Path(m['path']).name)}</h3><p>TEMPLATE, read back from the file, rendered by "
                         f"{esc(m['template_verification']['engine'])}: {m['template_verification']['identical']} of "
                         f"{m['template_verification']['conversations']} conversations byte for byte like the training chat "
                         f"template.</p>" + ("" if kind == "adapter" else f"<pre>{esc((out / 'Modelfile').read_text(encoding='utf-8'))}</pre>")
                         for kind, m in summary["modelfiles"].items())
    merged = (f"merged checkpoint <code>{esc(summary['merged'])}</code> ({stages['merge']['dtype']}, merged in "
              f"{stages['merge']['seconds']} s); " if summary["merged"] else "")
    body = f"""<h1>export: {esc(summary['name'])}</h1>
<p>export.mode {esc(summary['mode'])}: {merged}disk needed at most ~{summary['disk']['needed_mib']} MiB of
{summary['disk']['free_mib']} MiB free; total {summary['seconds']} s. The adapter was trained in
<b>{esc(str(summary.get('trained_dtype')))}</b>; the round trip's reference answers are computed in {esc(str(summary.get('reference_dtype')))}.
Base vs tuned on the same val set: <a href="../eval/report.html">eval/report.html</a>.</p>
<table><tr><th>file</th><th>MiB</th><th>seconds</th><th>peak RSS MiB</th><th></th></tr>{files}</table>
<h2>Template / EOS doctor</h2>
<table><tr><th>model</th><th>verdict</th><th>end of turn</th><th>eos id</th></tr>{doctor}</table>
<h2>Modelfiles</h2>{modelfiles}
<p>Ollama: {esc(summary['ollama']['commands'])}{' (ran)' if summary['ollama']['ran'] else ' (not installed here: run these)'}</p>
{''.join(f"<p><b>Serving note.</b> {esc(n)}</p>" for n in summary.get('serving_notes', []))}
{adapter_section(out, summary) if summary.get('adapter') else ''}
{kld_section(summary.get('kld'), summary.get('imatrix'))}
{roundtrip_section(roundtrip)}"""
    write_page(out, f"export report: {summary['name']}", body)
