"""The PEFT side of `scripts/gpu/bench-7b.sh`: LoRA training speed and memory on the GPU with
transformers + PEFT, on the job `loratune bench --preset NAME --device cuda` runs.

Job (keep in step with src/bench/mod.rs):
  * model: LlamaForCausalLM built from the preset's shape (llama2-7b: 32 layers, hidden 4096,
    32 heads of 128, MLP 11008, vocab 32000, untied head), random init after torch.manual_seed(0),
    bf16, on cuda, built directly on the device; attention: transformers' default (sdpa);
    --gradient-checkpointing turns on non-reentrant checkpointing.
  * LoRA r 16, alpha 32, dropout 0, bias none, on --targets (q_proj,k_proj,v_proj,o_proj); adapters
    f32 (PEFT's autocast_adapter_dtype default), base frozen.
  * data: random token ids (torch.randint over the vocabulary, seed 0), --batch-size x --seq-len per
    step, labels = ids (every token a target).
  * optimizer: torch.optim.AdamW(lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight_decay 0), one step per batch.
  * timing: --warmup (2) untimed steps, then --steps (10) timed, each between torch.cuda.synchronize()
    calls; tokens_per_s = batch * seq_len / median step time.
  * memory: torch.cuda.max_memory_allocated / max_memory_reserved over the whole run (load included).
  * data parallel: started by torchrun (WORLD_SIZE set), each rank builds the model on
    cuda:LOCAL_RANK, wraps it in DistributedDataParallel (NCCL) and draws its own ids (seed
    0 + rank); tokens_per_s stays per GPU and tokens_per_s_all_ranks is the group's. Rank 0 prints.
Output: the last stdout line is one JSON object.
"""
import argparse, json, os, statistics, time

import torch
import transformers
import peft
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
}

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="llama2-7b", choices=sorted(PRESETS))
ap.add_argument("--seq-len", type=int, default=1024)
ap.add_argument("--batch-size", type=int, default=1)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--steps", type=int, default=10)
ap.add_argument("--r", type=int, default=16)
ap.add_argument("--alpha", type=float, default=32.0)
ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
ap.add_argument("--gradient-checkpointing", action="store_true")
args = ap.parse_args()

# Under torchrun (even with one process): DDP over NCCL.
distributed = "WORLD_SIZE" in os.environ
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if distributed:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl")
torch.manual_seed(0)
t = time.perf_counter()
config = LlamaConfig(**PRESETS[args.preset])
with torch.device("cuda"):
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
if args.gradient_checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, bias="none",
                                         task_type="CAUSAL_LM", target_modules=args.targets.split(",")))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
attn = model.get_base_model().config._attn_implementation
if distributed:
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
torch.cuda.synchronize()
load_s = time.perf_counter() - t

gen = torch.Generator(device="cuda").manual_seed(rank)
S, B = args.seq_len, args.batch_size
times, losses = [], []
for s in range(args.warmup + args.steps):
    ids = torch.randint(0, config.vocab_size, (B, S), device="cuda", generator=gen)
    torch.cuda.synchronize()
    t = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    losses.append(float(loss))
    if s >= args.warmup:
        times.append(dt)
    if rank == 0:
        print(f"  peft step {s:3d}{'' if s >= args.warmup else ' (warmup)'}  loss {losses[-1]:.4f}  {dt:.3f} s  {B * S / dt:.0f} tokens/s", flush=True)

med = statistics.median(times)
if rank != 0:
    torch.distributed.destroy_process_group()
    raise SystemExit(0)
print(json.dumps({
    "ddp": distributed, "world_size": world, "tokens_per_s_all_ranks": world * B * S / med,
    "peer": "peft", "preset": args.preset, "seq_len": S, "batch_size": B, "r": args.r, "alpha": args.alpha,
    "targets": args.targets.split(","), "gradient_checkpointing": args.gradient_checkpointing,
    "tokens_per_s": B * S / med, "step_s_median": med, "step_s_min": min(times), "step_s": times, "losses": losses,
    "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
    "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    "attn_implementation": attn, "load_s": load_s,
    "lora_parameters": sum(p.numel() for p in params),
    "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
    "gpu": torch.cuda.get_device_name(0),
}))
if distributed:
    torch.distributed.destroy_process_group()
