"""The profiling runner: what runs on the device. It needs only Python 3.8+, numpy and onnxruntime, so it can be
pushed to a board or phone as a single file. It measures and writes raw numbers; the host computes statistics.

    python runner.py --job job.json --out result.json

job.json: {"models": ["m0.onnx", ...], "inputs": ["in0.npz", ...], "runs": 100, "min_seconds": 2.0,
           "max_seconds": 600, "warmup": 10, "threads": 2, "profile_runs": 3,
           "provider": {"name": "CPUExecutionProvider", "options": {}, "plugin": null}, "session_config": {}}
With several models, each round runs every model once, in turn (interleaved), until both `runs` rounds and
`min_seconds` have passed (or `max_seconds`). With "generation": {"new_tokens": G} (a language model with a KV
cache), a run is a whole greedy generation: the prompt in one pass, then G-1 tokens one at a time.
"""

import argparse
import json
import platform
import resource
import sys
import time

NOTABLE_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimddp", "i8mm"}


def session_factory(job):
    import onnxruntime as ort

    provider = job["provider"]
    plugin = provider.get("plugin")
    if plugin:
        import importlib

        ort.register_execution_provider_library(provider["name"], importlib.import_module(plugin).get_library_path())

    def make(model_path, profile_prefix=None):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if job.get("threads"):
            options.intra_op_num_threads = int(job["threads"])
        if len(job["models"]) > 1:  # interleaved sessions must not spin on each other's cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in job.get("session_config", {}).items():
            options.add_session_config_entry(key, str(value))
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        if plugin:
            devices = [d for d in ort.get_ep_devices() if d.ep_name == provider["name"]]
            options.add_provider_for_devices(devices, {k: str(v) for k, v in provider.get("options", {}).items()})
            return ort.InferenceSession(model_path, options)
        providers = [(provider["name"], provider.get("options", {}))] if provider.get("options") else [provider["name"]]
        return ort.InferenceSession(model_path, options, providers=providers)

    return make


def load_inputs(path):
    import numpy as np

    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def generate(session, feed, new_tokens):
    """One greedy generation: the prompt in one run (time to first token), then one token a run through the KV
    cache. Returns (time to first token in ms, [ms of each further token])."""
    import numpy as np

    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    start = time.perf_counter()
    outputs = dict(zip(names, session.run(None, feed)))
    first = (time.perf_counter() - start) * 1000
    mask, steps = feed["attention_mask"], []
    for _ in range(new_tokens - 1):
        token = outputs["logits"][:, -1].argmax(-1).reshape(-1, 1).astype(feed["input_ids"].dtype)
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), mask.dtype)], axis=1)
        step = {"input_ids": token, "attention_mask": mask}
        if "position_ids" in inputs:
            step["position_ids"] = (mask.sum(axis=1, keepdims=True) - 1).astype(feed["position_ids"].dtype)
        step.update({n.replace("present", "past_key_values"): v for n, v in outputs.items() if n.startswith("present")})
        start = time.perf_counter()
        outputs = dict(zip(names, session.run(None, step)))
        steps.append((time.perf_counter() - start) * 1000)
    return first, steps


def run_once(session, feed, job, record):
    """One timed run: a plain inference, or (a language model) a whole generation."""
    generation = job.get("generation")
    if not generation:
        start = time.perf_counter()
        session.run(None, feed)
        record["timings"].append((time.perf_counter() - start) * 1000)
        return
    first, steps = generate(session, feed, int(generation["new_tokens"]))
    record["ttft_ms"].append(first)
    record["timings"].extend(steps)
    record["decode_tokens_per_s"].append(len(steps) * 1000 / max(sum(steps), 1e-9))


def measure(job):
    make = session_factory(job)
    feeds = [load_inputs(p) for p in job["inputs"]]
    sessions, load_ms, first_ms = [], [], []
    for model, feed in zip(job["models"], feeds):
        start = time.perf_counter()
        session = make(model)
        load_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        session.run(None, feed)
        first_ms.append((time.perf_counter() - start) * 1000)
        sessions.append(session)
    for session, feed in zip(sessions, feeds):
        for _ in range(int(job["warmup"])):
            session.run(None, feed)
    records = [{"timings": [], "ttft_ms": [], "decode_tokens_per_s": []} for _ in sessions]
    started = time.perf_counter()
    rounds = 0
    while True:
        for index, (session, feed) in enumerate(zip(sessions, feeds)):
            run_once(session, feed, job, records[index])
        rounds += 1
        elapsed = time.perf_counter() - started
        if rounds >= job["runs"] and elapsed >= job["min_seconds"]:
            break
        if elapsed >= job.get("max_seconds", 3600):
            break
    peak = peak_rss_mb()  # the timed runs' peak: the profiling sessions below load every model once more
    providers = [session.get_providers() for session in sessions]
    del session, sessions[:]
    traces = []
    for index, (model, feed) in enumerate(zip(job["models"], feeds)):
        session = make(model, profile_prefix="trace_%d" % index)
        for _ in range(int(job.get("profile_runs", 3))):
            session.run(None, feed)
        traces.append(session.end_profiling())
    return {
        "models": [
            {
                "load_ms": load_ms[i],
                "first_run_ms": first_ms[i],
                "timings_ms": records[i]["timings"],
                "trace": traces[i],
                "providers": providers[i],
                **(
                    {"generation": {k: records[i][k] for k in ("ttft_ms", "decode_tokens_per_s")}}
                    if job.get("generation")
                    else {}
                ),
            }
            for i in range(len(providers))
        ],
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak,
        "environment": environment(job),
    }


def peak_rss_mb():
    """This process's peak resident memory (MiB), or None where it cannot be read. VmHWM belongs to the current
    program image; ru_maxrss would carry the high-water mark of the process we were forked from (Linux keeps it
    across exec), so it is used only where there is no /proc at all (macOS); a chroot without /proc (the arm64
    stand-in) measures nothing rather than its parent's peak."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if sys.platform.startswith("linux"):
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def outputs(job):
    """Validation mode: run every model on every input file once; save its outputs and the time of each run. One
    session a model, profiled: its trace is of every run (an emulated device is slow, so nothing runs twice)."""
    import numpy as np

    make = session_factory(job)
    result = {"models": [], "peak_rss_mb": 0.0, "environment": environment(job)}
    feeds = [load_inputs(p) for p in job["inputs"]]
    for index, model in enumerate(job["models"]):
        session = make(model, profile_prefix="trace_%d" % index)
        names = {i.name for i in session.get_inputs()}
        output_names = [o.name for o in session.get_outputs()]
        values, timings = {}, []
        for batch, feed in enumerate(feeds):
            feed = {k: v for k, v in feed.items() if k in names}
            start = time.perf_counter()
            produced = session.run(None, feed)
            timings.append((time.perf_counter() - start) * 1000)
            for name, value in zip(output_names, produced):
                values["b%d/%s" % (batch, name)] = value
        np.savez("outputs_%d.npz" % index, **values)
        result["models"].append(
            {"outputs": "outputs_%d.npz" % index, "timings_ms": timings, "trace": session.end_profiling()}
        )
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def machine():
    """The CPU architecture, spelled as Linux does (x86_64, aarch64)."""
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())


def cpu_info():
    """(CPU model name, all CPU flags) from /proc/cpuinfo; ("unknown", []) where there is none."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if model is None and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if flags is None and line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags or []


def environment(job):
    import onnxruntime as ort

    cpu, flags = cpu_info()
    return {
        "machine": machine(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_flags": [f for f in flags if f in NOTABLE_FLAGS],
        "threads": job.get("threads"),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.job) as handle:
        job = json.load(handle)
    result = outputs(job) if job.get("mode") == "outputs" else measure(job)
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    sys.exit(main())
