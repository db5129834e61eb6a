//! `anatomy random-gguf`: a language-model and vision-projector GGUF pair with random weights and
//! the real tensor shapes of Qwen2.5-VL-3B-Instruct or -7B-Instruct (or a tiny model for tests),
//! for measuring the runtime at full scale without downloading a checkpoint.
//!
//! Everything but the values goes through `anatomy convert`'s code: the sizes become an HF
//! `config.json` parsed by the models crate, the HF tensor list becomes GGUF tensors by the same
//! name mapping and recipe, and the metadata is the converter's. The vocabulary (`tokenizer.ggml.*`)
//! is copied from a GGUF that has one, by default the real Qwen2 vocabulary beside the repository,
//! and completed with the tokens Qwen2.5 adds (that file predates the vision tokens).
//! Each tensor is drawn and quantized in row chunks on every core and written before the next one
//! is drawn, into a temporary file renamed at the end.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anatomy_models::qwen2_5_vl::names::GgufFileKind;
use anatomy_models::qwen2_5_vl::recipe::Recipe;
use anatomy_models::qwen2_5_vl::{Config, PreprocessParams};
use anatomy_runtime::gguf::{GgufFile, OwnedValue, PendingTensor, Value, ValueType};
use anatomy_runtime::quant::quantize::quantize_row;
use anatomy_trainer::base::tensor_shapes;
use anatomy_trainer::rng::{hash_str, SplitMix64};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};

use super::convert::{self, metadata};

/// The real Qwen2 vocabulary, where CI and the development machines keep it (`../shared` beside
/// the repository).
const DEFAULT_VOCAB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/data/vocab/qwen2.gguf"
);

/// Hub token ids of Qwen2.5-VL (`config.json`), where [`qwen25_vocab`] puts their tokens.
const BOS: u32 = 151_643;
const EOS: u32 = 151_645;
const VISION_START: u32 = 151_652;
const VISION_END: u32 = 151_653;
const IMAGE_PAD: u32 = 151_655;
const VIDEO_PAD: u32 = 151_656;

/// Standard deviation of the random matrices: transformers' `initializer_range` for Qwen2.5-VL.
const INIT_STD: f32 = 0.02;

/// Values drawn per work item: enough to make thread hand-offs negligible, few enough that the
/// f32 values in flight stay at a few MiB whatever the tensor size.
const CHUNK_ELEMENTS: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Qwen2.5-VL-3B-Instruct.
    #[value(name = "3b")]
    B3,
    /// Qwen2.5-VL-7B-Instruct.
    #[value(name = "7b")]
    B7,
    /// A small model for tests: the demo model's sizes with the full vocabulary.
    Tiny,
}

#[derive(clap::Args)]
pub struct RandomGgufArgs {
    /// Which model's tensor shapes to use.
    #[arg(long, value_enum)]
    shape: Shape,
    /// Recipe: q4_k_m, q5_k_m, q8_0, f16 or f32 (as `anatomy convert`).
    #[arg(long, default_value = "q4_k_m")]
    quant: String,
    /// Output prefix: writes <prefix>.gguf (language model) and <prefix>-mmproj.gguf.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A GGUF whose `tokenizer.ggml.*` keys are copied: a Qwen2 vocabulary (llama.cpp's
    /// vocabulary-only file or a Qwen2/Qwen2.5-VL model).
    #[arg(long, default_value = DEFAULT_VOCAB)]
    vocab: PathBuf,
    /// No progress bar and no summary.
    #[arg(long)]
    quiet: bool,
}

/// The sizes that tell the models apart; everything else is common to Qwen2.5-VL.
#[derive(Clone, Debug, PartialEq)]
pub struct Sizes {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Embedding rows; `None` takes the vocabulary file's token count.
    pub vocab: Option<usize>,
    pub tied: bool,
    pub mrope_section: [usize; 3],
    pub vision_depth: usize,
    pub vision_hidden: usize,
    pub vision_heads: usize,
    pub vision_intermediate: usize,
    pub fullatt_blocks: Vec<usize>,
    /// The processor's pixel budget stored in the projector.
    pub max_pixels: usize,
}

impl Shape {
    /// The hub `config.json` values (3B, 7B) or the demo model's sizes (tiny).
    pub fn sizes(self) -> Sizes {
        // 3B and 7B share the vision tower, M-RoPE split and processor; only the text model differs.
        let hub = |hidden, intermediate, layers, heads, kv_heads, vocab, tied| Sizes {
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            vocab: Some(vocab),
            tied,
            mrope_section: [16, 24, 24],
            vision_depth: 32,
            vision_hidden: 1280,
            vision_heads: 16,
            vision_intermediate: 3420,
            fullatt_blocks: vec![7, 15, 23, 31],
            // The hub preprocessor_config.json: 28 * 28 * 16384.
            max_pixels: 12_845_056,
        };
        match self {
            Self::B3 => hub(2048, 11008, 36, 16, 2, 151_936, true),
            Self::B7 => hub(3584, 18944, 28, 28, 4, 152_064, false),
            Self::Tiny => Sizes {
                hidden: 128,
                intermediate: 256,
                layers: 4,
                heads: 4,
                kv_heads: 2,
                // The vocabulary file's own size, so every token has a row and none is padding.
                vocab: None,
                tied: true,
                mrope_section: [4, 6, 6],
                vision_depth: 2,
                vision_hidden: 64,
                vision_heads: 2,
                vision_intermediate: 128,
                fullatt_blocks: vec![1],
                max_pixels: 12_544,
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::B3 => "3b",
            Self::B7 => "7b",
            Self::Tiny => "tiny",
        }
    }
}

/// An HF `config.json` (transformers 4.x dialect) of `s` with `vocab` embedding rows.
fn config_json(s: &Sizes, vocab: usize) -> Json {
    json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_act": "silu",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 128_000,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": s.mrope_section},
        "tie_word_embeddings": s.tied,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "vision_start_token_id": VISION_START,
        "vision_end_token_id": VISION_END,
        "image_token_id": IMAGE_PAD,
        "video_token_id": VIDEO_PAD,
        "vision_config": {
            "depth": s.vision_depth,
            "hidden_act": "silu",
            "hidden_size": s.vision_hidden,
            "intermediate_size": s.vision_intermediate,
            "num_heads": s.vision_heads,
            "in_chans": 3,
            "out_hidden_size": s.hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": s.fullatt_blocks,
        },
    })
}

/// The model config of `shape` with `vocab` embedding rows, checked by the models crate's parser.
pub fn config(shape: Shape, vocab: usize) -> Result<Config> {
    let s = shape.sizes();
    let path = PathBuf::from(format!("<random-gguf {}>", shape.name()));
    Config::from_value(&config_json(&s, vocab), &path)
        .with_context(|| format!("the {} shape table", shape.name()))
}

/// A metadata value read from a GGUF, owned so that it can be written to another.
fn owned(v: &Value<'_>) -> OwnedValue {
    match v {
        Value::U8(x) => OwnedValue::U8(*x),
        Value::I8(x) => OwnedValue::I8(*x),
        Value::U16(x) => OwnedValue::U16(*x),
        Value::I16(x) => OwnedValue::I16(*x),
        Value::U32(x) => OwnedValue::U32(*x),
        Value::I32(x) => OwnedValue::I32(*x),
        Value::F32(x) => OwnedValue::F32(*x),
        Value::Bool(x) => OwnedValue::Bool(*x),
        Value::String(s) => OwnedValue::String((*s).to_string()),
        Value::Array(a) => OwnedValue::Array(a.elem_type(), a.iter().map(|x| owned(&x)).collect()),
        Value::U64(x) => OwnedValue::U64(*x),
        Value::I64(x) => OwnedValue::I64(*x),
        Value::F64(x) => OwnedValue::F64(*x),
    }
}

/// The `tokenizer.ggml.*` keys of a GGUF file, and its token count.
fn read_vocab(path: &Path) -> Result<(Vec<(String, OwnedValue)>, usize)> {
    let f = GgufFile::open(path).with_context(|| {
        format!(
            "reading the vocabulary {} (pass --vocab <a GGUF with tokenizer.ggml.* keys>)",
            path.display()
        )
    })?;
    let keys: Vec<(String, OwnedValue)> = f
        .metadata()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
        .map(|(k, v)| (k.to_string(), owned(&v)))
        .collect();
    let n = match keys.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        Some((_, OwnedValue::Array(ValueType::String, t))) if !t.is_empty() => t.len(),
        _ => bail!(
            "{}: no tokenizer.ggml.tokens string array, so no vocabulary to copy",
            path.display()
        ),
    };
    Ok((keys, n))
}

/// The tokens Qwen2.5 adds after its 151,643 BPE ranks, in id order from [`BOS`] (the hub
/// `tokenizer.json`). llama.cpp's Qwen2 vocabulary has only the first three and `[PAD{id}]`
/// placeholders at the others' ids, but the runtime needs the vision tokens.
const ADDED: [&str; 22] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

/// llama.cpp's token types.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;

/// Makes the copied vocabulary Qwen2.5-VL's with `rows` entries: unused rows padded as llama.cpp's
/// converter pads them (`[PAD{id}]`, unused), Qwen2.5's added tokens put at their ids (typed as
/// `anatomy convert` types them), and the special ids the converter takes from `config.json`.
fn qwen25_vocab(keys: &mut Vec<(String, OwnedValue)>, rows: usize) -> Result<()> {
    let mut tokens = Vec::new();
    let mut types = Vec::new();
    for (k, v) in keys.iter_mut() {
        match (k.as_str(), v) {
            ("tokenizer.ggml.tokens", OwnedValue::Array(_, items)) => {
                tokens = std::mem::take(items);
            }
            ("tokenizer.ggml.token_type", OwnedValue::Array(_, items)) => {
                types = std::mem::take(items);
            }
            _ => {}
        }
    }
    // A vocabulary without types is all normal tokens, as the runtime reads it.
    types.resize(tokens.len(), OwnedValue::I32(1));
    for i in tokens.len()..rows {
        tokens.push(OwnedValue::String(format!("[PAD{i}]")));
        types.push(OwnedValue::I32(TYPE_UNUSED));
    }
    for (i, added) in ADDED.iter().enumerate() {
        let id = BOS as usize + i;
        let Some(OwnedValue::String(have)) = tokens.get(id) else {
            bail!("the vocabulary has no token {id} for {added} ({rows} rows)");
        };
        if have != added && *have != format!("[PAD{id}]") {
            bail!("the vocabulary has {have:?} at id {id}, where Qwen2.5 has {added}");
        }
        let looks_special = added.starts_with("<|") && added.ends_with("|>");
        tokens[id] = OwnedValue::String(added.to_string());
        types[id] = OwnedValue::I32(if looks_special {
            TYPE_CONTROL
        } else {
            TYPE_USER_DEFINED
        });
    }
    // Replaced in place, so the keys keep the vocabulary file's order.
    let mut set = |key: &str, value: OwnedValue| match keys.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value,
        None => keys.push((key.into(), value)),
    };
    set(
        "tokenizer.ggml.tokens",
        OwnedValue::Array(ValueType::String, tokens),
    );
    set(
        "tokenizer.ggml.token_type",
        OwnedValue::Array(ValueType::I32, types),
    );
    set("tokenizer.ggml.bos_token_id", OwnedValue::U32(BOS));
    set("tokenizer.ggml.eos_token_id", OwnedValue::U32(EOS));
    // Qwen2's ByteLevel post-processor adds neither.
    set("tokenizer.ggml.add_bos_token", OwnedValue::Bool(false));
    set("tokenizer.ggml.add_eos_token", OwnedValue::Bool(false));
    Ok(())
}

/// Every HF tensor of `cfg` planned into one of the two GGUF files, by the converter's rules.
pub(crate) fn plan(
    cfg: &Config,
    file: GgufFileKind,
    recipe: Recipe,
) -> Result<Vec<convert::Planned>> {
    let shapes = tensor_shapes(cfg);
    let names: Vec<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
    let shape = |hf: &str| {
        shapes
            .iter()
            .find(|(n, _)| n == hf)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| anyhow!("no tensor {hf}"))
    };
    convert::plan(&names, shape, cfg, file, recipe)
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    Zeros,
    Ones,
    Normal(f32),
}

/// The vectors named `.weight` in Qwen2.5-VL are all RMSNorm scales, which start at one; biases
/// start at zero, as transformers initialises them.
fn fill(t: &PendingTensor) -> Fill {
    match (t.shape.len(), t.name.ends_with(".bias")) {
        (1, true) => Fill::Zeros,
        (1, false) => Fill::Ones,
        _ => Fill::Normal(INIT_STD),
    }
}

/// Appends `n` values of `fill` drawn from `rng` (Box-Muller, both outputs used).
fn draw(fill: Fill, rng: &mut SplitMix64, n: usize, out: &mut Vec<f32>) {
    match fill {
        Fill::Zeros => out.resize(out.len() + n, 0.0),
        Fill::Ones => out.resize(out.len() + n, 1.0),
        Fill::Normal(std) => {
            let end = out.len() + n;
            while out.len() < end {
                let r = (-2.0 * (1.0 - rng.unit()).ln()).sqrt();
                let (s, c) = (std::f64::consts::TAU * rng.unit()).sin_cos();
                out.push((r * c) as f32 * std);
                if out.len() < end {
                    out.push((r * s) as f32 * std);
                }
            }
        }
    }
}

/// The encoded bytes of random tensor `t`. Chunks of whole rows are drawn from their own seed
/// (seed, tensor name, chunk index) so the bytes do not depend on the number of threads; block
/// formats never straddle rows, so chunk encodings concatenate to the tensor's.
fn encode_random(t: &PendingTensor, seed: u64, threads: usize) -> Result<Vec<u8>> {
    let size = t
        .size()
        .with_context(|| format!("{}: rows are not whole {} blocks", t.name, t.ty))?;
    let ne0 = t.shape.first().copied().unwrap_or(1) as usize;
    let row_bytes = ne0 / t.ty.block_size() * t.ty.type_size();
    let mut out = vec![0u8; usize::try_from(size).context("tensor larger than memory")?];
    if out.is_empty() {
        return Ok(out);
    }
    let chunk_bytes = (CHUNK_ELEMENTS / ne0).max(1) * row_bytes;
    let fill = fill(t);
    let tensor_seed = hash_str(&format!("{seed}/{}", t.name));
    let jobs = Mutex::new(out.chunks_mut(chunk_bytes).enumerate());
    let done = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut values = Vec::new();
                    loop {
                        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).next();
                        let Some((i, dst)) = job else {
                            return Ok(());
                        };
                        // One mixing step apart, so that chunk streams do not overlap as
                        // neighbouring SplitMix64 seeds' streams do.
                        let chunk_seed = SplitMix64::new(tensor_seed ^ i as u64).next_u64();
                        let mut rng = SplitMix64::new(chunk_seed);
                        values.clear();
                        draw(fill, &mut rng, dst.len() / row_bytes * ne0, &mut values);
                        quantize_row(t.ty, &values, dst)
                            .with_context(|| format!("quantizing {} to {}", t.name, t.ty))?;
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow!("a worker drawing {} panicked", t.name))?
        })
    });
    done.map(|()| out)
}

/// `<prefix>.gguf` and `<prefix>-mmproj.gguf`; a prefix given with `.gguf` loses it first.
fn out_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let p = prefix.to_string_lossy();
    let stem = p.strip_suffix(".gguf").unwrap_or(&*p);
    (
        PathBuf::from(format!("{stem}.gguf")),
        PathBuf::from(format!("{stem}-mmproj.gguf")),
    )
}

pub fn run(args: RandomGgufArgs) -> Result<()> {
    let recipe = Recipe::parse(&args.quant).with_context(|| {
        format!(
            "unknown --quant {:?} (q4_k_m, q5_k_m, q8_0, f16, f32)",
            args.quant
        )
    })?;
    let (mut vocab, n_tokens) = read_vocab(&args.vocab)?;
    let rows = args.shape.sizes().vocab.unwrap_or(n_tokens);
    if n_tokens > rows {
        bail!(
            "{} has {n_tokens} tokens, more than the {rows} embedding rows of the {} shape",
            args.vocab.display(),
            args.shape.name()
        );
    }
    qwen25_vocab(&mut vocab, rows)?;
    let cfg = config(args.shape, rows)?;
    let (lm_path, mm_path) = out_paths(&args.out);
    let name = format!("qwen2.5-vl-{}-random", args.shape.name());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let progress = !args.quiet;

    let lm = plan(&cfg, GgufFileKind::Language, recipe)?;
    let mut lm_meta = metadata::language_params(&cfg, &name, recipe)?;
    lm_meta.extend(vocab);
    lm_meta.push(("general.size_label".into(), convert::size_label(&lm)));
    convert::write(&lm_path, &lm_meta, lm, progress, |p| {
        encode_random(&p.tensor, args.seed, threads)
    })
    .with_context(|| format!("writing {}", lm_path.display()))?;

    let pre = PreprocessParams {
        max_pixels: args.shape.sizes().max_pixels,
        ..PreprocessParams::default()
    };
    let mm = plan(&cfg, GgufFileKind::Mmproj, recipe)?;
    let mut mm_meta = metadata::mmproj(&cfg, &pre, &name, convert::mmproj_file_type(recipe))?;
    mm_meta.push(("general.size_label".into(), convert::size_label(&mm)));
    convert::write(&mm_path, &mm_meta, mm, progress, |p| {
        encode_random(&p.tensor, args.seed, threads)
    })
    .with_context(|| format!("writing {}", mm_path.display()))?;

    if !args.quiet {
        println!("{}\n{}", lm_path.display(), mm_path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Elements of both files of `shape`, from the shape table through the converter's plan.
    fn parameters(shape: Shape) -> u64 {
        let cfg = config(shape, shape.sizes().vocab.unwrap()).unwrap();
        [GgufFileKind::Language, GgufFileKind::Mmproj]
            .iter()
            .flat_map(|&f| plan(&cfg, f, Recipe::F32).unwrap())
            .map(|p| p.tensor.shape.iter().product::<u64>())
            .sum()
    }

    fn find(plan: &[convert::Planned], name: &str) -> PendingTensor {
        plan.iter()
            .find(|p| p.tensor.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .tensor
            .clone()
    }

    /// The published parameter counts (HF's 3.75B and 8.29B, vision tower included).
    #[test]
    fn real_shapes_have_the_published_parameter_counts() {
        assert_eq!(parameters(Shape::B3), 3_754_622_976);
        assert_eq!(parameters(Shape::B7), 8_292_166_656);
    }

    #[test]
    fn three_b_metadata_and_tensors_are_the_hub_models() {
        let cfg = config(Shape::B3, 151_936).unwrap();
        let meta = metadata::language_params(&cfg, "x", Recipe::Q4KM).unwrap();
        let get = |k: &str| {
            meta.iter()
                .find(|(m, _)| m == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {k}"))
        };
        for (k, v) in [
            ("qwen2vl.block_count", 36),
            ("qwen2vl.embedding_length", 2048),
            ("qwen2vl.feed_forward_length", 11008),
            ("qwen2vl.attention.head_count", 16),
            ("qwen2vl.attention.head_count_kv", 2),
            ("qwen2vl.context_length", 128_000),
            ("general.file_type", 15),
        ] {
            assert_eq!(get(k), OwnedValue::U32(v), "{k}");
        }
        assert_eq!(
            get("qwen2vl.rope.dimension_sections"),
            OwnedValue::i32s([16, 24, 24, 0])
        );
        assert_eq!(get("qwen2vl.rope.freq_base"), OwnedValue::F32(1e6));
        assert_eq!(
            get("qwen2vl.attention.layer_norm_rms_epsilon"),
            OwnedValue::F32(1e-6)
        );

        let lm = plan(&cfg, GgufFileKind::Language, Recipe::Q4KM).unwrap();
        // 36 blocks of 12 tensors, embedding, final norm; tied, so no output.weight.
        assert_eq!(lm.len(), 36 * 12 + 2);
        assert!(lm.iter().all(|p| p.tensor.name != "output.weight"));
        let embd = find(&lm, "token_embd.weight");
        assert_eq!(embd.shape, [2048, 151_936]);
        assert_eq!(embd.ty.name(), "q6_K");
        assert_eq!(find(&lm, "blk.0.attn_k.weight").shape, [2048, 256]);
        assert_eq!(find(&lm, "blk.35.ffn_down.weight").shape, [11008, 2048]);

        let pre = PreprocessParams {
            max_pixels: Shape::B3.sizes().max_pixels,
            ..PreprocessParams::default()
        };
        let mm_meta =
            metadata::mmproj(&cfg, &pre, "x", convert::mmproj_file_type(Recipe::Q4KM)).unwrap();
        let get = |k: &str| {
            mm_meta
                .iter()
                .find(|(m, _)| m == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {k}"))
        };
        for (k, v) in [
            ("clip.vision.block_count", 32),
            ("clip.vision.embedding_length", 1280),
            ("clip.vision.feed_forward_length", 3420),
            ("clip.vision.attention.head_count", 16),
            ("clip.vision.projection_dim", 2048),
            ("clip.vision.patch_size", 14),
            ("clip.vision.n_wa_pattern", 8),
            ("clip.vision.image_max_pixels", 12_845_056),
            ("general.file_type", 1),
        ] {
            assert_eq!(get(k), OwnedValue::U32(v), "{k}");
        }
        let mm = plan(&cfg, GgufFileKind::Mmproj, Recipe::Q4KM).unwrap();
        assert_eq!(find(&mm, "mm.2.weight").shape, [5120, 2048]);
        assert_eq!(find(&mm, "v.patch_embd.weight.1").shape, [14, 14, 3, 1280]);
        assert!(mm
            .iter()
            .all(|p| p.tensor.shape.len() == 1 || p.tensor.ty.name() == "f16"));
    }

    #[test]
    fn seven_b_is_untied() {
        let cfg = config(Shape::B7, 152_064).unwrap();
        let lm = plan(&cfg, GgufFileKind::Language, Recipe::Q8_0).unwrap();
        assert_eq!(find(&lm, "output.weight").shape, [3584, 152_064]);
        assert_eq!(lm.len(), 28 * 12 + 3);
    }

    #[test]
    fn random_bytes_do_not_depend_on_threads_and_values_have_the_scale() {
        let t = PendingTensor {
            name: "blk.0.ffn_up.weight".into(),
            shape: vec![256, 9000],
            ty: anatomy_runtime::quant::GgmlType::F32,
        };
        let one = encode_random(&t, 3, 1).unwrap();
        assert_eq!(one, encode_random(&t, 3, 4).unwrap());
        assert_ne!(one, encode_random(&t, 4, 1).unwrap());
        let v: Vec<f32> = one
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(
            mean.abs() < 1e-4 && (std - 0.02).abs() < 2e-4,
            "{mean} {std}"
        );
        let norm = PendingTensor {
            name: "blk.0.attn_norm.weight".into(),
            shape: vec![64],
            ty: anatomy_runtime::quant::GgmlType::F32,
        };
        assert_eq!(
            encode_random(&norm, 0, 2).unwrap(),
            1f32.to_le_bytes().repeat(64)
        );
    }

    #[test]
    fn vocab_gets_padding_added_tokens_and_ids() {
        let n = BOS as usize + 3;
        let mut tokens: Vec<String> = (0..BOS).map(|i| format!("t{i}")).collect();
        tokens.extend(ADDED[..3].iter().map(|t| t.to_string()));
        let mut types = vec![1; n];
        types[BOS as usize..].fill(TYPE_CONTROL);
        let mut keys = vec![
            (
                "tokenizer.ggml.model".to_string(),
                OwnedValue::String("gpt2".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                OwnedValue::strings(tokens),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                OwnedValue::i32s(types),
            ),
            (
                "tokenizer.ggml.eos_token_id".to_string(),
                OwnedValue::U32(BOS),
            ),
        ];
        qwen25_vocab(&mut keys, 151_936).unwrap();
        let get = |k: &str| keys.iter().find(|(m, _)| m == k).unwrap().1.clone();
        let (OwnedValue::Array(_, tokens), OwnedValue::Array(_, types)) = (
            get("tokenizer.ggml.tokens"),
            get("tokenizer.ggml.token_type"),
        ) else {
            panic!("not arrays")
        };
        assert_eq!(tokens.len(), 151_936);
        assert_eq!(types.len(), 151_936);
        let at = |id: u32| (tokens[id as usize].clone(), types[id as usize].clone());
        let s = |t: &str| OwnedValue::String(t.into());
        assert_eq!(
            at(IMAGE_PAD),
            (s("<|image_pad|>"), OwnedValue::I32(TYPE_CONTROL))
        );
        assert_eq!(
            at(151_657),
            (s("<tool_call>"), OwnedValue::I32(TYPE_USER_DEFINED))
        );
        assert_eq!(
            at(151_935),
            (s("[PAD151935]"), OwnedValue::I32(TYPE_UNUSED))
        );
        assert_eq!(at(7), (s("t7"), OwnedValue::I32(1)));
        assert_eq!(get("tokenizer.ggml.eos_token_id"), OwnedValue::U32(EOS));
        assert_eq!(get("tokenizer.ggml.model"), s("gpt2"));
        assert_eq!(keys.len(), 7);

        // Another vocabulary's token where Qwen2.5 has a vision token is refused.
        let mut other = vec![(
            "tokenizer.ggml.tokens".to_string(),
            OwnedValue::strings((0..151_936).map(|i| format!("t{i}"))),
        )];
        let e = qwen25_vocab(&mut other, 151_936).unwrap_err().to_string();
        assert!(e.contains("151643") && e.contains("<|endoftext|>"), "{e}");
    }

    #[test]
    fn out_path_prefixes() {
        assert_eq!(
            out_paths(Path::new("d/m.gguf")),
            (PathBuf::from("d/m.gguf"), PathBuf::from("d/m-mmproj.gguf"))
        );
        assert_eq!(out_paths(Path::new("m")).1, PathBuf::from("m-mmproj.gguf"));
    }
}
