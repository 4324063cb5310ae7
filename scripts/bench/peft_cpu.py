"""The PEFT side of `loratune bench`: LoRA training speed on CPU, transformers + PEFT (float32 by default).

Job (loratune's bench implements the same one):
  * model: SmolLM2-135M-Instruct from models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, dequantized
    to float32 by transformers (gguf_file=); the attention implementation transformers picks by
    default (sdpa; reported as "attn_implementation"); by default no gradient checkpointing;
    model.train().
    --dtype (f32 default; bf16, f16) sets the base model's dtype (PEFT keeps the adapters in
    float32); --gradient-checkpointing turns on transformers' non-reentrant checkpointing.
  * LoRA: --r 16, --alpha 32 (scaling alpha/r = 2), lora_dropout=0, bias "none", --targets
    q_proj,k_proj,v_proj,o_proj; PEFT's default init (lora_A kaiming-uniform, lora_B zeros) after
    torch.manual_seed(0) (loratune draws A from its own RNG, seed 0: same distribution, other
    values). Only the LoRA weights train.
  * token stream: every conversation (`messages`) of --data (default examples/data/calendar-train.jsonl), in file
    order (falls back to examples/data/calendar-sample.jsonl, with a note on stderr and
    "data" in the JSON, when the train file does not exist), each rendered with the tokenizer's
    chat template (add_generation_prompt=False) and tokenized without adding special tokens
    (tokenizer(rendered, add_special_tokens=False)), all concatenated (no separator).
    "stream_sha256" is the sha256 of the ids as little-endian uint32, which loratune also
    computes: equal hashes mean both sides train on identical token ids.
  * windows: the stream cut into consecutive windows of exactly --seq-len tokens, window w =
    stream[w*seq_len : (w+1)*seq_len], w = 0 .. n_windows-1 with n_windows = len(stream) // seq_len
    (the tail is dropped).
  * steps: step s (counting warmup steps, s = 0, 1, ...) takes the --batch-size windows
    (s*batch_size + k) mod n_windows, k = 0 .. batch_size-1, stacked into input_ids (B, seq_len);
    no attention mask (all ones), no padding; labels = input_ids (every token is a target; the
    model shifts: mean cross-entropy over the B*(seq_len-1) next-token predictions).
  * optimizer: torch.optim.AdamW over the LoRA weights, --lr 1e-4 (constant), betas (0.9, 0.999), eps 1e-8,
    weight_decay 0 (set explicitly: torch's own default would be 0.01), no scheduler, no gradient
    clipping; one step per batch: forward, backward, optimizer.step(), zero_grad.
  * timing: torch.set_num_threads(--threads, default os.cpu_count()); --warmup steps (2) untimed,
    then --steps (8) timed, each timed with time.perf_counter() around forward + backward +
    optimizer step + zero_grad; tokens_per_s = batch*seq_len / median timed step time.
  * memory: "peak_rss_mib" is the process's peak resident memory (ru_maxrss, load included);
    "train_peak_rss_mib" the peak from the end of the load to the last step (VmHWM of
    /proc/self/status after resetting it through /proc/self/clear_refs; null where that fails).
  * output: the last stdout line is one JSON object:
    {"peer": "peft", "tokens_per_s", "step_s_median", "step_s_mean", "step_s_min", "steps",
     "seq_len", "batch_size", "warmup", "r", "alpha", "targets", "lr", "dtype",
     "gradient_checkpointing",
     "threads", "torch", "transformers", "peft", "first_loss" (loss of step 0, the first warmup
     step, i.e. the base model's since lora_B = 0), "last_loss" (loss of the last timed step),
     plus "tokens_per_s_best" (fastest timed step), "attn_implementation", "data",
     "conversations", "stream_tokens", "stream_sha256", "windows", "lora_parameters", "load_s",
     "step_s" (every timed step), "losses" (every step), "peak_rss_mib", "train_peak_rss_mib",
     "loadavg_start" / "loadavg_end" (/proc/loadavg around the steps), "other_cpu_cores" /
     "steal_cores" (cores' worth of CPU used by other processes / stolen by the hypervisor during
     the timed steps, from /proc/stat: near 0 on an otherwise idle machine)}.

Run with the reference venv (scripts/reference/setup-venv.sh):
    scripts/reference/.venv/bin/python scripts/bench/peft_cpu.py [--model M.gguf] [--data F.jsonl]
        [--seq-len 256] [--batch-size 4] [--r 16] [--alpha 32] [--targets q_proj,k_proj,v_proj,o_proj]
        [--lr 1e-4] [--warmup 2] [--steps 8] [--threads N] [--dtype f32] [--gradient-checkpointing]
`loratune bench --peer peft` runs it with its own arguments and prints both results.
"""
import argparse, hashlib, json, os, resource, statistics, sys, time, warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF dequantization bar
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # raised inside PEFT

import numpy
import torch
import transformers
import peft
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

root = Path(__file__).resolve().parents[2]
transformers.utils.logging.disable_progress_bar()

DTYPES = {"f32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "f16": torch.float16, "float16": torch.float16}


def vm_hwm_mib():
    """Peak resident memory (VmHWM) in MiB, or None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def loadavg():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def cpu_times():
    """(machine busy, machine steal, this process) CPU time in clock ticks, or None."""
    try:
        f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        rest = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        return f[0] + f[1] + f[2] + f[5] + f[6], f[7], int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return None


def contention(a, b, seconds):
    """Cores used by other processes, and stolen by the hypervisor, between a and b."""
    if a is None or b is None:
        return None, None
    ticks = os.sysconf("SC_CLK_TCK") * seconds
    return (max(0, (b[0] - a[0]) - (b[2] - a[2])) / ticks, (b[1] - a[1]) / ticks)


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(root / "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data", default=None, help="default: examples/data/calendar-train.jsonl, "
                    "else calendar-sample.jsonl")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    assert args.steps >= 1 and args.seq_len >= 2 and args.batch_size >= 1
    targets = [t for t in args.targets.split(",") if t]

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.data:
        data = Path(args.data)
    else:
        data = root / "examples/data/calendar-train.jsonl"
        if not data.exists():
            fallback = root / "examples/data/calendar-sample.jsonl"
            print(f"note: {data.relative_to(root)} does not exist; using {fallback.relative_to(root)}",
                  file=sys.stderr)
            data = fallback

    gguf = Path(args.model)
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=DTYPES[args.dtype],
                                                 local_files_only=True)
    load_s = time.perf_counter() - t
    attn = model.config._attn_implementation

    # token stream
    stream, n_conv = [], 0
    for line in open(data, encoding="utf-8"):
        if not line.strip():
            continue
        msgs = [{"role": m["role"], "content": m["content"]} for m in json.loads(line)["messages"]]
        rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
        stream.extend(tok(rendered, add_special_tokens=False)["input_ids"])
        n_conv += 1
    S, B = args.seq_len, args.batch_size
    n_windows = len(stream) // S
    if n_windows == 0:
        sys.exit(f"{data}: {len(stream)} tokens, fewer than one window of {S}")
    windows = torch.tensor(stream[: n_windows * S], dtype=torch.long).view(n_windows, S)
    stream_sha256 = hashlib.sha256(numpy.asarray(stream, dtype="<u4").tobytes()).hexdigest()

    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=targets)
    model = get_peft_model(model, config)
    model.train()
    base = model.get_base_model()
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # older transformers
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    assert bool(checkpointing) == args.gradient_checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    n_train = sum(p.numel() for p in params)
    print(f"peft: {data.name}: {n_conv} conversations, {len(stream)} tokens, {n_windows} windows of {S}; "
          f"batch {B}; {n_train} LoRA parameters; attn {attn}; threads {args.threads}", file=sys.stderr)

    load_peak = max(maxrss_mib(), vm_hwm_mib() or 0.0)
    reset = reset_peak_rss()
    loadavg_start = loadavg()
    losses, times = [], []
    cpu_start = None
    for s in range(args.warmup + args.steps):
        if s == args.warmup:
            cpu_start, t_cpu = cpu_times(), time.perf_counter()
        idx = torch.tensor([(s * B + k) % n_windows for k in range(B)])
        ids = windows[idx]
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        losses.append(float(loss.detach()))
        timed = s >= args.warmup
        if timed:
            times.append(dt)
        print(f"  step {s:3d}{'' if timed else ' (warmup)'}  loss {losses[-1]:.4f}  {dt:.3f} s  "
              f"{B * S / dt:.0f} tokens/s", file=sys.stderr)

    loadavg_end = loadavg()
    other_cores, steal_cores = contention(cpu_start, cpu_times(), time.perf_counter() - t_cpu)
    train_peak = vm_hwm_mib() if reset else None
    peak = max(load_peak, maxrss_mib(), train_peak or 0.0)
    step_med = statistics.median(times)
    print(json.dumps({
        "peer": "peft",
        "tokens_per_s": B * S / step_med,
        "step_s_median": step_med,
        "step_s_mean": statistics.fmean(times),
        "step_s_min": min(times),
        "tokens_per_s_best": B * S / min(times),
        "steps": args.steps,
        "seq_len": S,
        "batch_size": B,
        "warmup": args.warmup,
        "r": args.r,
        "alpha": args.alpha,
        "targets": targets,
        "lr": args.lr,
        "dtype": args.dtype,
        "gradient_checkpointing": args.gradient_checkpointing,
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "attn_implementation": attn,
        "data": str(data.resolve().relative_to(root)) if data.resolve().is_relative_to(root) else str(data),
        "conversations": n_conv,
        "stream_tokens": len(stream),
        "stream_sha256": stream_sha256,
        "windows": n_windows,
        "lora_parameters": n_train,
        "load_s": load_s,
        "step_s": times,
        "losses": losses,
        "peak_rss_mib": peak,
        "train_peak_rss_mib": train_peak,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
        "other_cpu_cores": other_cores,
        "steal_cores": steal_cores,
    }))


if __name__ == "__main__":
    main()
