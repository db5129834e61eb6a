//! Synthetic laparoscopic cholecystectomy scenes with SGG-VQA style questions, written in the
//! Anatomy-R1 JSON layout so that [`crate::data::load`] reads them as it reads the paper's files.
//!
//! A dataset directory written by [`generate`] holds:
//!
//! ```text
//! <dir>/images/000000.png ...   one RGB PNG per scene, `size` x `size`
//! <dir>/train.json              Anatomy-R1 records of the training scenes
//! <dir>/holdout.json            records of the held-out scenes (no image shared with train.json)
//! <dir>/questions.json          all records, train then holdout
//! <dir>/synth.json              the settings that reproduce the directory, and the counts
//! ```
//!
//! Each record has the fields of `GRPO-ASC-Learning.json` (`instruction`, `sft_prompt`,
//! `solution`, `answer`, `images`) plus `form` (`position`, `attribute` or `relation`) and
//! `caption` (the structure of each 3x3 grid cell, which an SFT target may reason with). Image paths
//! are relative (`images/000000.png`), so a directory can be moved; load with
//! [`load_options`] (the directory as image root).
//!
//! Scene `i` is drawn from its own generator seeded from `(seed, i)`, so the output is byte-for-byte
//! the same for a seed whatever the number of threads, and a scene does not change when `count`
//! grows. The held-out scenes are the last `round(count * holdout_fraction)`: scenes are drawn
//! independently, so the tail is as random a subset as any.

pub mod questions;
pub mod render;
pub mod scene;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::data::prompt::PAPER_INSTRUCTION_CHOICE;
use crate::data::{letter, LoadOptions};
use crate::rng::SplitMix64;

pub use questions::{Asked, Form};
pub use scene::{Scene, Structure};

/// Smallest frame side: below this the 3x3 grid cells and instrument tips are a few pixels wide.
pub const MIN_SIZE: usize = 64;
/// Largest frame side: the models resize to a few hundred pixels anyway.
pub const MAX_SIZE: usize = 2048;
/// Most scenes in one directory.
pub const MAX_COUNT: usize = 10_000_000;
/// Most questions asked about one scene.
pub const MAX_PER_IMAGE: usize = 16;

/// The supervised fine-tuning prompt that goes with [`PAPER_INSTRUCTION_CHOICE`] in the paper's
/// `GRPO-ASC-Learning.json` (an `<image>` tag, no thinking).
pub const PAPER_SFT_CHOICE: &str = "<image>You are an expert in cholecystectomy surgical procedures, and I will provide you with a clinical image of a cholecystectomy surgery. Please analyze the image and follow the instructions:\n\n1.Select the most suitable option for the problem based on the given anatomy options. Only one correct answer exists. You should only return the choice letter, not any other text.\n\n2.Output the final answer in <answer> </answer> tags. The output answer format should be as follows:<answer>YOUR CHOICE HERE</answer>.";

#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    /// Number of scenes (images).
    pub count: usize,
    pub seed: u64,
    /// Frame side in pixels.
    pub size: usize,
    /// Share of scenes held out, in `[0, 1]`.
    pub holdout_fraction: f64,
    /// Questions per scene (distinct questions; fewer when the scene does not allow that many).
    pub per_image: usize,
    /// The question forms asked; empty means all, in the real data's mix.
    pub forms: Vec<Form>,
    /// Balance the correct answers over the six classes: scene `i` prefers a question whose answer
    /// is class `i mod 6` (the real data is about 40% liver, which a small model learns to guess).
    pub balance: bool,
    /// The instruction put before each question instead of the paper's (e.g. a short one, which
    /// makes training a small model several times faster); the SFT prompt gets it too.
    pub instruction: Option<String>,
    /// List all six classes as options, in a fixed order, instead of four shuffled ones.
    pub all_options: bool,
    /// Worker threads; 0 means one per core. The output does not depend on it.
    pub threads: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            count: 1000,
            seed: 0,
            size: 224,
            holdout_fraction: 0.2,
            per_image: 1,
            forms: Vec::new(),
            balance: false,
            instruction: None,
            all_options: false,
            threads: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("count must be between 1 and {MAX_COUNT}, got {0}")]
    Count(usize),
    #[error("size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {0}")]
    Size(usize),
    #[error("holdout fraction must be between 0 and 1, got {0}")]
    HoldoutFraction(f64),
    #[error("questions per image must be between 1 and {MAX_PER_IMAGE}, got {0}")]
    PerImage(usize),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot encode PNG: {source}")]
    Png {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("cannot serialise records: {0}")]
    Json(#[from] serde_json::Error),
    #[error("scene {0}: no unambiguous question after several layouts")]
    NoQuestion(usize),
}

impl SynthConfig {
    pub fn validate(&self) -> Result<(), SynthError> {
        if self.count == 0 || self.count > MAX_COUNT {
            return Err(SynthError::Count(self.count));
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            return Err(SynthError::Size(self.size));
        }
        if !(0.0..=1.0).contains(&self.holdout_fraction) {
            return Err(SynthError::HoldoutFraction(self.holdout_fraction));
        }
        if self.per_image == 0 || self.per_image > MAX_PER_IMAGE {
            return Err(SynthError::PerImage(self.per_image));
        }
        Ok(())
    }

    /// Scenes held out: the last `round(count * holdout_fraction)`.
    pub fn holdout_count(&self) -> usize {
        ((self.count as f64 * self.holdout_fraction).round() as usize).min(self.count)
    }
}

/// One question record, fields in the order of the paper's files.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Record {
    pub instruction: String,
    pub sft_prompt: String,
    pub solution: String,
    pub answer: String,
    pub images: String,
    pub form: &'static str,
    /// The scene cell by cell ([`questions::caption`]).
    pub caption: String,
}

impl Record {
    fn new(asked: &Asked, image: &str, instruction: Option<&str>, caption: &str) -> Record {
        let mut body = format!("\nQuestion:\n{}\nAnatomy Options:", asked.question);
        for (i, o) in asked.options.iter().enumerate() {
            body.push('\n');
            body.push(letter(i));
            body.push_str(". ");
            body.push_str(o);
        }
        Record {
            instruction: format!("{}{body}", instruction.unwrap_or(PAPER_INSTRUCTION_CHOICE)),
            sft_prompt: format!("{}{body}", instruction.unwrap_or(PAPER_SFT_CHOICE)),
            solution: letter(asked.answer).to_string(),
            answer: asked.options[asked.answer].clone(),
            images: image.to_string(),
            form: asked.form.key(),
            caption: caption.to_string(),
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub images: usize,
    pub train: usize,
    pub holdout: usize,
    /// Questions per form (`position`, `attribute`, `relation`).
    pub forms: BTreeMap<&'static str, usize>,
    /// Questions per correct answer.
    pub answers: BTreeMap<&'static str, usize>,
}

/// The generator of scene `index` under `seed`: independent streams per scene.
pub fn scene_rng(seed: u64, index: usize) -> SplitMix64 {
    let mut mixer = SplitMix64::new(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    SplitMix64::new(mixer.next_u64())
}

/// Scene `index` of a dataset and its questions (at most `per_image`, distinct), as [`generate`]
/// writes them.
pub fn make_scene(
    seed: u64,
    index: usize,
    size: usize,
    per_image: usize,
) -> Result<(Scene, Vec<Asked>), SynthError> {
    make_scene_with(seed, index, size, per_image, &[], false)
}

/// [`make_scene`] restricted to `forms` (empty: all) and, with `balance`, preferring questions
/// whose answer is class `index mod 6`. Without either it draws exactly what [`make_scene`] draws.
pub fn make_scene_with(
    seed: u64,
    index: usize,
    size: usize,
    per_image: usize,
    forms: &[Form],
    balance: bool,
) -> Result<(Scene, Vec<Asked>), SynthError> {
    let mut rng = scene_rng(seed, index);
    let target = balance.then(|| Structure::ALL[index % Structure::ALL.len()]);
    // A layout that allows no unambiguous question (rare) is replaced by the next one drawn; with
    // a target class, layouts are also redrawn until one lets the class be asked about, and only
    // the last few accept any answer.
    let layouts = if target.is_some() { 48 } else { 16 };
    for layout in 0..layouts {
        let scene = Scene::generate(size, &mut rng);
        let facts = scene.facts();
        let any_answer = layout + 8 >= layouts;
        let mut asked: Vec<Asked> = Vec::new();
        for _ in 0..per_image * 4 {
            if asked.len() == per_image {
                break;
            }
            if let Some(a) = questions::ask_forms(&scene, &facts, &mut rng, forms) {
                let wanted = any_answer || target.is_none_or(|t| a.structure == t);
                if wanted && asked.iter().all(|b| b.question != a.question) {
                    asked.push(a);
                }
            }
        }
        if !asked.is_empty() {
            return Ok((scene, asked));
        }
    }
    Err(SynthError::NoQuestion(index))
}

/// Options for [`crate::data::load`] that resolve a synthetic directory's relative image paths.
pub fn load_options(dir: impl AsRef<Path>) -> LoadOptions {
    LoadOptions {
        image_root: Some(dir.as_ref().to_path_buf()),
        skip_bad: false,
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_png(path: &Path, rgb: &[u8], size: usize) -> Result<(), SynthError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    use image::ImageEncoder;
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = std::io::BufWriter::new(file);
    PngEncoder::new_with_quality(&mut w, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            rgb,
            size as u32,
            size as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|source| SynthError::Png {
            path: path.to_path_buf(),
            source,
        })?;
    std::io::Write::flush(&mut w).map_err(io_err(path))
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), SynthError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    std::fs::write(path, text).map_err(io_err(path))
}

/// Writes a dataset into `out` (created if missing; files of an earlier run are overwritten).
/// `progress` is called with the number of scenes done so far, from worker threads.
pub fn generate(
    out: &Path,
    config: &SynthConfig,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Summary, SynthError> {
    config.validate()?;
    let images = out.join("images");
    std::fs::create_dir_all(&images).map_err(io_err(&images))?;
    let digits = config.count.saturating_sub(1).to_string().len().max(6);

    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Vec<Record>>>> = Mutex::new(vec![None; config.count]);
    let first_error: Mutex<Option<SynthError>> = Mutex::new(None);
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(config.count);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= config.count || failed.load(Ordering::Relaxed) {
                    break;
                }
                let rel = format!("images/{i:0digits$}.png");
                let made = make_scene_with(
                    config.seed,
                    i,
                    config.size,
                    config.per_image,
                    &config.forms,
                    config.balance,
                )
                .and_then(|(scene, asked)| {
                    write_png(&out.join(&rel), &render::render(&scene), config.size)?;
                    let caption = questions::caption(&scene);
                    Ok(asked
                        .iter()
                        .map(|a| {
                            let a = if config.all_options {
                                questions::with_all_options(a.clone())
                            } else {
                                a.clone()
                            };
                            Record::new(&a, &rel, config.instruction.as_deref(), &caption)
                        })
                        .collect())
                });
                match made {
                    Ok(records) => {
                        if let Ok(mut r) = results.lock() {
                            r[i] = Some(records);
                        }
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_default();

    let split = config.count - config.holdout_count();
    let mut train = Vec::new();
    let mut holdout = Vec::new();
    for (i, records) in results.into_iter().enumerate() {
        let records = records.ok_or(SynthError::NoQuestion(i))?;
        if i < split {
            train.extend(records);
        } else {
            holdout.extend(records);
        }
    }
    let mut forms: BTreeMap<&'static str, usize> =
        [Form::Position, Form::Attribute, Form::Relation]
            .iter()
            .map(|f| (f.key(), 0))
            .collect();
    let mut answers: BTreeMap<&'static str, usize> =
        Structure::ALL.iter().map(|s| (s.name(), 0)).collect();
    for r in train.iter().chain(&holdout) {
        *forms.entry(r.form).or_default() += 1;
        if let Some(s) = Structure::ALL.iter().find(|s| s.name() == r.answer) {
            *answers.entry(s.name()).or_default() += 1;
        }
    }
    write_json(&out.join("train.json"), &train)?;
    write_json(&out.join("holdout.json"), &holdout)?;
    let all: Vec<&Record> = train.iter().chain(&holdout).collect();
    write_json(&out.join("questions.json"), &all)?;
    let summary = Summary {
        images: config.count,
        train: train.len(),
        holdout: holdout.len(),
        forms,
        answers,
    };
    let manifest = serde_json::json!({
        "generator": "anatomy synth",
        "format": 1,
        "seed": config.seed,
        "count": config.count,
        "size": config.size,
        "holdout_fraction": config.holdout_fraction,
        "per_image": config.per_image,
        "holdout_from_scene": split,
        "summary": &summary,
    });
    write_json(&out.join("synth.json"), &manifest)?;
    Ok(summary)
}
