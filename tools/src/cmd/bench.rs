//! `anatomy bench`: load time, image encode time (first and cached), prefill and decode tokens/s,
//! peak RSS and a memory-read bandwidth measured in the same run, medians over repetitions.
//!
//! Prefill and decode are measured as llama-bench measures `pp512` and `tg128`: the prompt from an
//! empty context, and `--gen-tokens` generated one at a time from an empty context
//! (`decode_tok_s`). Decoding after the prompt, as an answer about an image does, also reads the
//! prompt's KV cache at every step; that is reported beside it (`decode_after_prompt_tok_s`).
//!
//! Decode is bound by streaming the weights once per token, so the report also gives the
//! bandwidth bound (weight bytes / measured bandwidth) and the fraction of it reached, for both.
//! Bandwidth is probed before each decode and after every [`PROBE_EVERY`] tokens of it; each
//! stretch of tokens is judged against the mean of the two probes around it, and a decode's
//! fraction is the time the bound would have taken for its tokens over the time they took. The
//! fractions are medians over repetitions; `read_bandwidth_gb_s` and `decode_bound_tok_s` are the
//! probes' median, and `read_bandwidth_min_gb_s` / `read_bandwidth_max_gb_s` their range, which
//! shows how far the machine drifted during the run. With every bandwidth probe the cores' clock
//! is probed too (dependent adds per second of the slowest thread, `backend::cpu::clock`):
//! `cpu_clock_ghz` is their median and `cpu_clock_min_ghz` / `cpu_clock_max_ghz` their range, null
//! where the probe is not built. The dots need a good part of a core to keep up with the memory,
//! so a run whose cores were slowed can fall short of the bound for that reason; these tell such
//! a run apart from one held back by the memory or the pages.
//! `file_huge_page_bytes` says how much of the mapped files sits on huge pages at the end, and
//! `lm_huge_page_bytes` how much of the language model alone: a mapped model partly on 4 KiB
//! pages decodes much slower, so below [`HUGE_SHARE`] of it `bench` warns on stderr.

use std::path::PathBuf;
use std::time::Instant;

use anatomy_runtime::backend::CacheType;
use anatomy_runtime::generate::{
    file_huge_page_bytes, file_huge_page_bytes_of, peak_rss_bytes, ImageInput,
};
use anatomy_runtime::gguf::Residence;
use anatomy_runtime::{Model, ModelOptions};
use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Language-model GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Vision-projector GGUF file (with --image: image encode time).
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// Image to encode.
    #[arg(long, requires = "mmproj")]
    image: Option<PathBuf>,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens generated for the decode measurements (from an empty context, and after the prompt).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Worker threads; physical cores by default.
    #[arg(long)]
    threads: Option<usize>,
    /// Read the GGUF files into memory (on huge pages where the OS allows) instead of mapping
    /// them (llama.cpp's --no-mmap); the JSON's `mmap` says which.
    #[arg(long)]
    no_mmap: bool,
    /// What the KV cache stores: f32 or f16 (the JSON's `cache_type` says which).
    #[arg(long, default_value = "f32", value_name = "f32|f16")]
    cache_type: CacheType,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Decoded tokens between two bandwidth probes: about a second at 3B sizes on two cores, so the
/// probes (some 50 ms each) add a few percent to the run's wall time and none to the decode's.
const PROBE_EVERY: usize = 16;

/// The share of the language model's bytes on huge pages below which `bench` warns: on the
/// 2-vCPU Xeon VM, a 3B Q4_K_M file with 85% of it on huge pages decoded at 69-80% of the bound,
/// a fresh copy with all of it at 82-93%, in the same hour.
const HUGE_SHARE: f64 = 0.95;

/// The new last tokens of the follow-up prompt (a question of a few words after the same frame).
const FOLLOW_UP_TOKENS: usize = 16;

/// The smallest and the largest of `v`; `None` when it is empty.
fn range(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v.iter().copied().reduce(f64::min)?;
    Some((lo, v.iter().copied().fold(lo, f64::max)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.reps == 0 || args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--reps, --prompt-tokens and --gen-tokens must be positive");
    }
    let opts = ModelOptions {
        threads: args.threads,
        context: Some(args.prompt_tokens + args.gen_tokens + 1),
        residence: Residence::from_no_mmap(args.no_mmap),
        cache_type: args.cache_type,
        ..Default::default()
    };
    let mut loads = Vec::new();
    let mut model = None;
    for _ in 0..args.reps {
        let m = Model::load(&args.model, args.mmproj.as_deref(), &opts)
            .with_context(|| format!("loading {}", args.model.display()))?;
        loads.push(m.load_ms());
        model = Some(m);
    }
    let Some(model) = model else {
        bail!("no repetition ran");
    };
    let threads = anatomy_runtime::backend::Backend::threads(model.backend());
    let mut s = model.session();
    let (mut enc, mut enc_cached, mut image_tokens) = (Vec::new(), Vec::new(), 0);
    if let Some(img) = &args.image {
        for _ in 0..args.reps {
            let t = Instant::now();
            let p = s.preprocess(&ImageInput::Path(img.clone()))?;
            // A fresh session each time: the point is the vision tower, not the cache.
            let mut fresh = model.session();
            let h = fresh.encode_image(&p)?;
            enc.push(t.elapsed().as_secs_f64() * 1e3);
            image_tokens = h.tokens;
            let t = Instant::now();
            let p = fresh.preprocess(&ImageInput::Path(img.clone()))?;
            fresh.encode_image(&p)?;
            enc_cached.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    // Ordinary-text ids (avoiding the special tokens at the end of the vocabulary).
    let vocab = model
        .tokenizer()
        .vocab_size()
        .min(model.lm_params().vocab_size) as u32;
    let span = vocab.saturating_sub(512).max(1);
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % span)
        .collect();
    let lm_bytes = model.lm_file_bytes();
    let weight_bytes = lm_bytes as f64;
    // Each thread sums its share of 512 MiB (far larger than any cache), best of three passes,
    // before the decode and after every `PROBE_EVERY` tokens of it: on a shared machine the
    // bandwidth available drifts within a run (on the 2-vCPU EPYC VM from 29 to 44 GB/s within a
    // quarter of an hour), so each stretch of tokens is judged against the mean of the probes that
    // bracket it. With one probe before a 128-token decode, the same commands run six times within
    // half an hour gave fractions from 56% to 98%; with one before and one after, 70% to 98%.
    let probe = anatomy_runtime::backend::cpu::bandwidth::ReadProbe::new(threads, 512 << 20);
    // The cores' clock, probed wherever the bandwidth is, so that a decode below the bound can be
    // seen to have run on slowed cores or not.
    let clock = anatomy_runtime::backend::cpu::clock::ClockProbe::new(threads);
    let mut clocks = Vec::new();
    let mut probe_both = || {
        clocks.extend(clock.rate());
        probe.best_rate(3)
    };
    // Returns (tokens/s, fraction of the bound, the probes).
    let mut decode = |s: &mut anatomy_runtime::Session| -> Result<(f64, f64, Vec<f64>)> {
        let mut probes = vec![probe_both()];
        // The time the decode took, and the time the bound would have taken for the same tokens.
        let (mut spent, mut bound_time) = (0.0f64, 0.0f64);
        let mut done = 0;
        while done < args.gen_tokens {
            let n = PROBE_EVERY.min(args.gen_tokens - done);
            let t = Instant::now();
            for _ in 0..n {
                let next = anatomy_runtime::sampling::argmax(s.logits()) % span;
                s.append(&[next])?;
            }
            spent += t.elapsed().as_secs_f64();
            let after = probe_both();
            let bw = (probes[probes.len() - 1] + after) / 2.0;
            bound_time += n as f64 * weight_bytes / bw;
            probes.push(after);
            done += n;
        }
        Ok((args.gen_tokens as f64 / spent, bound_time / spent, probes))
    };
    let mut follow_up = prompt.clone();
    let tail = follow_up.len().saturating_sub(FOLLOW_UP_TOKENS);
    for (i, t) in follow_up[tail..].iter_mut().enumerate() {
        *t = (*t + 1 + i as u32) % span;
    }
    let (mut follow_ms, mut follow_tokens) = (Vec::new(), 0);
    let (mut pp, mut tg, mut tg_after) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bws, mut frac, mut frac_after) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.reps {
        // One prompt token to start from, then generation: llama-bench's tg.
        s.prefill(&prompt[..1], None)?;
        let (rate, f, bw) = decode(&mut s)?;
        tg.push(rate);
        frac.push(f);
        bws.extend(bw);
        // The whole prompt runs: the context shares its first token.
        s.reset();
        let t = Instant::now();
        s.prefill(&prompt, None)?;
        pp.push(args.prompt_tokens as f64 / t.elapsed().as_secs_f64());
        let (rate, f, bw) = decode(&mut s)?;
        tg_after.push(rate);
        frac_after.push(f);
        bws.extend(bw);
        // A follow-up question: the same prompt with other last tokens, of which the session runs
        // only those after the prefix it holds.
        let t = Instant::now();
        let reused = s.prefill(&follow_up, None)?;
        follow_ms.push(t.elapsed().as_secs_f64() * 1e3);
        follow_tokens = follow_up.len() - reused;
    }
    let (bw_min, bw_max) = range(&bws).unwrap_or((f64::INFINITY, 0.0));
    let bw = median(bws);
    let ghz = |v: Option<f64>| v.map_or(serde_json::Value::Null, |v| (v / 1e9).into());
    let clock_range = range(&clocks);
    let clock_median = (!clocks.is_empty()).then(|| median(clocks));
    let (decode, decode_after) = (median(tg), median(tg_after));
    let bound = bw / weight_bytes;
    // After the decodes every page of the language model has been read, so this is its share on
    // huge pages.
    let lm_huge = file_huge_page_bytes_of(&args.model);
    // Files of a few MiB hold only a few huge pages' worth at all, and their decode is not a
    // stream from memory.
    let too_few = |h: u64| (h as f64) < HUGE_SHARE * lm_bytes as f64 && lm_bytes >= 64 << 20;
    if let Some(h) = lm_huge.filter(|&h| !args.no_mmap && too_few(h)) {
        eprintln!(
            "warning: only {:.2} of the {:.2} GB of {} are mapped on huge pages; the rest is on \
             4 KiB pages, which decode reads much slower (README, \"Speed at Qwen2.5-VL-3B \
             scale\"). The page cache keeps what it holds in small pages until it drops the \
             file: copy it with large writes (`dd bs=4M`), drop the cache, or run with \
             --no-mmap.",
            h as f64 / 1e9,
            lm_bytes as f64 / 1e9,
            args.model.display()
        );
    }
    let out = serde_json::json!({
        "model": args.model.display().to_string(),
        "threads": threads,
        "mmap": !args.no_mmap,
        "cache_type": args.cache_type.name(),
        "kv_cache_bytes": model.cache_bytes(),
        "reps": args.reps,
        "load_ms": median(loads),
        "image_tokens": image_tokens,
        "image_encode_ms": if enc.is_empty() { serde_json::Value::Null } else { median(enc).into() },
        "image_encode_cached_ms": if enc_cached.is_empty() { serde_json::Value::Null } else { median(enc_cached).into() },
        "prompt_tokens": args.prompt_tokens,
        "prefill_tok_s": median(pp),
        "follow_up_prefill_ms": median(follow_ms),
        "follow_up_prefill_tokens": follow_tokens,
        "gen_tokens": args.gen_tokens,
        "decode_tok_s": decode,
        "decode_after_prompt_tok_s": decode_after,
        "read_bandwidth_gb_s": bw / 1e9,
        "read_bandwidth_min_gb_s": bw_min / 1e9,
        "read_bandwidth_max_gb_s": bw_max / 1e9,
        "cpu_clock_ghz": ghz(clock_median),
        "cpu_clock_min_ghz": ghz(clock_range.map(|r| r.0)),
        "cpu_clock_max_ghz": ghz(clock_range.map(|r| r.1)),
        "lm_file_bytes": lm_bytes,
        "decode_bound_tok_s": bound,
        "decode_fraction_of_bound": median(frac),
        "decode_after_prompt_fraction_of_bound": median(frac_after),
        "peak_rss_bytes": peak_rss_bytes(),
        "file_huge_page_bytes": file_huge_page_bytes(),
        "lm_huge_page_bytes": lm_huge,
    });
    if args.json {
        println!("{out}");
    } else if let Some(o) = out.as_object() {
        for (k, v) in o {
            println!("{k:>26}: {v}");
        }
    }
    Ok(())
}
