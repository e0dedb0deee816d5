"""export/report.html: files, sizes, times, doctor, Modelfile check, round trip per GGUF, side-by-side answers."""

from __future__ import annotations

from pathlib import Path

from common.report import esc, write_page

SHOWN = ["field_accuracy", "valid_json", "exact_match", "rougeL", "chrf"]


def roundtrip_section(roundtrip: dict) -> str:
    head = ("<tr><th>model</th><th>exact match with HF</th><th>token agreement</th><th>same prompt tokens</th>"
            "<th>stopped at end of turn</th>" + "".join(f"<th>{k}</th>" for k in SHOWN) + "<th>seconds</th></tr>")
    hf = roundtrip["hf"]
    rows = [f"<tr><td>merged HF</td><td>-</td><td>-</td><td>-</td><td>{hf['stopped_at_end_of_turn']}</td>"
            + "".join(f"<td>{hf['metrics'].get(k, '')}</td>" for k in SHOWN) + f"<td>{hf['seconds']}</td></tr>"]
    for t, r in roundtrip["gguf"].items():
        rows.append(f"<tr><td>{esc(t)} GGUF</td><td>{r['exact_match_with_hf']}</td><td>{r['token_agreement']}</td>"
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
            "<p>Each GGUF is prompted through the chat template embedded in it (llama.cpp); the merged model through "
            "transformers. Answers that differ from the merged model's are red.</p>"
            f"<table><tr><th>prompt</th><th>reference</th><th>merged HF</th>{''.join(f'<th>{t}</th>' for t in types)}</tr>{samples}</table>")


def write_report(out: Path, summary: dict, roundtrip: dict) -> None:
    stages = summary["stages"]
    files = "".join(f"<tr><td>{esc(t)}</td><td>{esc(Path(p).name)}</td><td>{round(stages[t]['bytes'] / 2**20, 1)}</td>"
                    f"<td>{stages[t]['seconds']}</td><td>{stages[t]['peak_rss_mib']}</td></tr>" for t, p in summary["files"].items())
    doctor = "".join(f"<tr><td>{esc(k)}</td><td>{'OK' if d['ok'] else 'PROBLEMS'}</td><td>{esc(str(d['end_of_turn']))} "
                     f"(id {d['end_of_turn_id']})</td><td>{d['eos_id']}</td></tr>" for k, d in summary["doctor"].items())
    modelfile = (out / "Modelfile").read_text(encoding="utf-8")
    verification = summary["template_verification"]
    body = f"""<h1>export: {esc(summary['name'])}</h1>
<p>merged checkpoint <code>{esc(summary['merged'])}</code> ({stages['merge']['dtype']}, merged in {stages['merge']['seconds']} s);
disk needed ~{summary['disk']['needed_mib']} MiB of {summary['disk']['free_mib']} MiB free; total {summary['seconds']} s.
Base vs tuned on the same val set: <a href="../eval/report.html">eval/report.html</a>.</p>
<table><tr><th>type</th><th>file</th><th>MiB</th><th>seconds</th><th>peak RSS MiB</th></tr>{files}</table>
<h2>Template / EOS doctor</h2>
<table><tr><th>model</th><th>verdict</th><th>end of turn</th><th>eos id</th></tr>{doctor}</table>
<h2>Modelfile</h2>
<p>TEMPLATE rendered by {esc(verification['engine'])}: {verification['identical']} of
{verification['conversations']} conversations byte for byte like the training chat template.
Ollama: {esc(summary['ollama']['commands'])}{' (ran)' if summary['ollama']['ran'] else ' (not installed here: run these)'}</p>
<pre>{esc(modelfile)}</pre>
{''.join(f"<p><b>Serving note.</b> {esc(n)}</p>" for n in summary.get('serving_notes', []))}
{roundtrip_section(roundtrip)}"""
    write_page(out, f"export report: {summary['name']}", body)
