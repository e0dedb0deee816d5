"""`make serve`: the run's exported models behind one OpenAI-compatible endpoint on 127.0.0.1 (serve.host).

    python -m export.serve [--config config.yaml] [key=value ...]

Model names (the `model` field of a request):
  <run>               the run's merged GGUF (the type its Modelfile serves)
  <base>              the shared base GGUF the run's adapter goes on (runs/_bases/<id>/), no adapter
  <base>+<run2>       that base with run2's adapter, for every run whose adapter was exported on this base
The base is loaded once with every adapter (llama.cpp's llama-server, `--lora` each, none applied by default); a
request selects its adapter per request (llama-server's `lora` field), so N behaviours cost one base in memory.
Each GGUF is served by its own llama-server process on a private loopback port, with the chat template the export
verified (the trained model's, read from the run's GGUF) and its stop tokens; this process routes by `model`,
answers /v1/models and /health, and refuses what it cannot route with an OpenAI-style 4xx error.
Ctrl-C (or SIGTERM) stops the router and every llama-server.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from common.cli import run_stage
from common.errors import UserError
from export.catalog import adapters_on
from export.imatrix import tool
from export.roundtrip import cpu_threads

MAX_BODY = 8 * 2**20
ROUTED = ("/v1/chat/completions", "/v1/completions")


@dataclass
class Backend:
    """One llama-server: a GGUF, the adapters loaded on it (name -> id), its port and process."""
    name: str
    gguf: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    ctx: int = 2048  # context per slot: the trained sequence length (the Modelfile's num_ctx)
    port: int = 0
    proc: subprocess.Popen | None = None


@dataclass
class Route:
    backend: Backend
    lora: list[dict] | None  # None: no adapters on this backend; else llama-server's per-request `lora` list


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def plan(cfg) -> tuple[list[Backend], dict[str, Route]]:
    """The backends and the model names from the run's export (summary.json) and the adapter catalog."""
    out = cfg.run_dir / "export"
    path = out / "summary.json"
    if not path.is_file():
        raise UserError(f"{path} not found: export the run first with `make gguf` (or `make all`)")
    summary = json.loads(path.read_text(encoding="utf-8"))
    served = cfg.serve.gguf or summary["modelfile_gguf"].removeprefix(f"{summary['name']}-").removesuffix(".gguf")
    backends, routes = [], {}
    if summary.get("files"):
        if served not in summary["files"]:
            raise UserError(f"serve.gguf: {served} was not exported for run {cfg.run.name}; exported: "
                            f"{', '.join(summary['files'])}")
        merged = Backend(cfg.run.name, Path(summary["files"][served]), ctx=summary["num_ctx"])
        backends.append(merged)
        routes[cfg.run.name] = Route(merged, None)
    if summary.get("adapter"):
        a = summary["adapter"]
        base_dir = Path(cfg.run.root) / "_bases" / a["base_id"]
        base_name = Path(json.loads((base_dir / "base.json").read_text(encoding="utf-8"))["model"].rstrip("/")).name
        base_file = Path(a["bases"].get(served) or a["base_served"])
        base = Backend(base_name, base_file, ctx=summary["num_ctx"])
        for rec in adapters_on(base_dir):
            base.adapters[f"{base_name}+{rec['run']}"] = Path(rec["adapter_gguf"])
        backends.append(base)
        # Every adapter's scale, always: an empty list makes llama-server fall back to its start-up scales without
        # clearing the slot's prompt cache, computed under the previous request's adapter (server-context.cpp).
        n = len(base.adapters)
        routes[base_name] = Route(base, [{"id": i, "scale": 0.0} for i in range(n)])
        for k, name in enumerate(base.adapters):
            routes[name] = Route(base, [{"id": i, "scale": 1.0 if i == k else 0.0} for i in range(n)])
    commas = [str(p) for b in backends for p in b.adapters.values() if "," in str(p)]
    if commas:
        raise UserError(f"serve: llama-server takes its adapters as one comma-separated list, so {commas[0]} cannot be "
                        "loaded; rename the folder or file without the comma")
    missing = [str(p) for b in backends for p in [b.gguf, *b.adapters.values()] if not p.is_file()]
    if missing:
        raise UserError(f"serve: {', '.join(missing)} not found; rerun `make gguf` for the run that wrote it")
    return backends, routes


def start(backend: Backend, template: Path, cfg, log_dir: Path) -> None:
    """One llama-server on a free loopback port, each of serve.parallel slots with the trained context length."""
    backend.port = free_port()
    cmd = [str(tool("llama-server")), "-m", str(backend.gguf), "--host", "127.0.0.1", "--port", str(backend.port),
           "-c", str(backend.ctx * cfg.serve.parallel), "-np", str(cfg.serve.parallel), "--no-kv-unified",
           "--jinja", "--chat-template-file", str(template), "--reasoning-format", "none", "--no-webui",
           "-t", str(cpu_threads()), "--alias", backend.name]
    if backend.adapters:  # one --lora with every file, comma-separated: a repeated --lora keeps only the last
        cmd += ["--lora", ",".join(str(p) for p in backend.adapters.values()), "--lora-init-without-apply"]
    log = open(log_dir / f"llama-server-{backend.port}.log", "wb")  # noqa: SIM115  (lives as long as the process)
    backend.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent)  # noqa: PLW1509  (started before any thread)


def _die_with_parent() -> None:
    """In the child: SIGTERM when the router dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def wait_ready(backend: Backend, log_dir: Path, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if backend.proc.poll() is not None:
            text = (log_dir / f"llama-server-{backend.port}.log").read_text(errors="replace").strip().splitlines()
            why = [ln for ln in text if "error" in ln.lower()] or text or ["no output"]
            raise UserError(f"llama-server for {backend.gguf} exited ({backend.proc.returncode}): {why[-1].strip()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise UserError(f"llama-server for {backend.gguf} did not answer /health within {timeout:.0f} s")


def error_body(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code or str(status)}}).encode()


class Handler(BaseHTTPRequestHandler):
    """The router: OpenAI-style endpoints, each request forwarded to the llama-server its `model` names."""
    protocol_version = "HTTP/1.1"
    routes: ClassVar[dict[str, Route]] = {}  # set per server by make_handler

    def log_message(self, fmt, *args):  # one line per request on stdout, not stderr
        print(f"serve: {self.address_string()} {fmt % args}", flush=True)

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            now = int(time.time())
            data = [{"id": name, "object": "model", "created": now, "owned_by": "chat-tune"} for name in self.routes]
            self.reply(200, json.dumps({"object": "list", "data": data}).encode())
        elif self.path == "/health":
            self.reply(200, b'{"status": "ok"}')
        else:
            self.reply(404, error_body(404, f"no such endpoint: GET {self.path}", "not_found_error"))

    def do_POST(self):
        if self.path not in ROUTED:
            return self.reply(404, error_body(404, f"no such endpoint: POST {self.path}; served: {', '.join(ROUTED)}",
                                              "not_found_error"))
        size = int(self.headers.get("Content-Length") or 0)
        if size > MAX_BODY:
            return self.reply(413, error_body(413, f"request body of {size} bytes is over {MAX_BODY}"))
        try:
            body = json.loads(self.rfile.read(size) or b"null")
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            return self.reply(400, error_body(400, "the request body is not a JSON object"))
        route = self.routes.get(body.get("model"))
        if route is None:
            return self.reply(404, error_body(404, f"model {body.get('model')!r} is not served here; served: "
                                              f"{', '.join(self.routes)}", code="model_not_found"))
        if route.lora is not None:
            body["lora"] = route.lora
        self.forward(route.backend, body)

    def forward(self, backend: Backend, body: dict) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=600)
            conn.request("POST", self.path, json.dumps(body).encode(), {"Content-Type": "application/json"})
            resp = conn.getresponse()
        except OSError as e:
            return self.reply(502, error_body(502, f"llama-server for {body['model']} is not answering: {e}",
                                              "server_error"))
        if not body.get("stream") or resp.status != 200:
            data = resp.read()
            try:  # the name the client asked for, not the backend's alias
                doc = json.loads(data)
                if resp.status == 200 and "model" in doc:
                    doc["model"] = body["model"]
                    data = json.dumps(doc).encode()
            except ValueError:
                pass
            return self.reply(resp.status, data, resp.getheader("Content-Type", "application/json"))
        self.send_response(200)
        self.send_header("Content-Type", resp.getheader("Content-Type", "text/event-stream"))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while line := resp.readline():  # server-sent events, one `data: {...}` line each, relayed as they come
            if line.startswith(b"data: {"):
                try:
                    doc = json.loads(line[6:])
                    doc["model"] = body["model"]
                    line = b"data: " + json.dumps(doc).encode() + b"\n"
                except ValueError:
                    pass
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class Router(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hangs up (a closed keep-alive connection) is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def make_handler(routes: dict[str, Route]) -> type[Handler]:
    return type("RoutedHandler", (Handler,), {"routes": routes})


def chat_template(backends: list[Backend], tmp: Path) -> Path:
    """The chat template the export verified: the one in the run's first GGUF (the trained model's)."""
    from common.doctor import facts_from_gguf

    path = tmp / "chat_template.jinja"
    path.write_text(facts_from_gguf(backends[0].gguf).chat_template, encoding="utf-8")
    return path


def serve(cfg, on_ready=None) -> None:
    """Start the backends and the router; serve until interrupted. on_ready(router, backends), where given, is called
    once everything answers (the benchmark uses it)."""
    if not tool("llama-server").is_file():
        raise UserError(f"{tool('llama-server')} not found: `make setup` builds it (scripts/build_llama_tools.sh)")
    backends, routes = plan(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="serve-"))
    router = None
    try:
        template = chat_template(backends, tmp)
        for b in backends:
            start(b, template, cfg, tmp)
        for b in backends:
            wait_ready(b, tmp)
        try:
            router = Router((cfg.serve.host, cfg.serve.port), make_handler(routes))
        except OSError as e:
            raise UserError(f"serve.port: cannot listen on {cfg.serve.host}:{cfg.serve.port} ({e.strerror}); choose "
                            "another with PORT=... or serve.port=...") from None
        print(f"serve: http://{cfg.serve.host}:{router.server_address[1]}/v1  (OpenAI-compatible; Ctrl-C stops)")
        for name, r in routes.items():
            extra = f" + {r.backend.adapters[name]}" if name in r.backend.adapters else ""
            print(f"  model {name!r}: {r.backend.gguf}{extra}")
        print(f"  e.g. curl http://{cfg.serve.host}:{router.server_address[1]}/v1/chat/completions -H 'Content-Type: "
              f"application/json' -d '{{\"model\": \"{next(iter(routes))}\", \"messages\": [{{\"role\": \"user\", "
              f"\"content\": \"Hello\"}}]}}'", flush=True)
        if on_ready:
            on_ready(router, backends)
        router.serve_forever()
    finally:
        if router:
            router.server_close()
        for b in backends:
            if b.proc and b.proc.poll() is None:
                b.proc.terminate()
        for b in backends:
            if b.proc:
                try:
                    b.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    b.proc.kill()
        print("serve: stopped", flush=True)


def run(cfg) -> None:
    """The stage entry: serve until Ctrl-C or SIGTERM."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also where SIGINT was inherited ignored (a background job)
    try:
        serve(cfg)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(run_stage("export.serve", "The run's GGUFs and the adapters on its base behind one OpenAI-compatible "
                       "endpoint.", run))
