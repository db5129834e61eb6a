//! [`Trainer`]: one optimizer step at a time. A GRPO-family step draws `batch_size` questions
//! (from the curriculum when ASCL is on), spreads a hard question's group of G rollouts over GDQA
//! variants, samples the completions (the image through the vision tower once, each prompt once,
//! its KV cache shared by its samples), scores them, computes group advantages over the whole
//! group, and accumulates the loss's gradients prompt by prompt before one clipped AdamW update.
//! An SFT step takes the answer cross-entropy of its batch in padded forwards of `sft.micro_batch`
//! examples (by default the whole batch in one; a training vision tower sees their images in one
//! forward too).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_models::qwen2_5_vl::positions::GridThw;
use anatomy_models::qwen2_5_vl::preprocess::{preprocess_file, PreprocessParams};
use anatomy_models::qwen2_5_vl::sampling::{Sampler, SamplingParams};
use anatomy_models::qwen2_5_vl::template::{user_prompt, ChatTokenizer};
use candle_core::{DType, Device, Tensor};

use super::checkpoint::{self, Checkpoint, RunState, StepHistory, Weights};
use super::config::{Finetune, Reference, RunConfig, SftAnswer};
use super::image_cache::{ImageCache, DEFAULT_BUDGET_BYTES};
use super::record::StepRecord;
use super::sampling::QuestionSampler;
use super::sft_target::{caption_of, sft_text};
use super::RunError;
use crate::ascl::curriculum::{split_stages, Curriculum, CurriculumConfig, Pacing};
use crate::ascl::similarity::{all_similarities, Aggregate};
use crate::ascl::SimilaritySource;
use crate::data::{self, prompt, Question};
use crate::gdqa::hardness::{HardnessConfig, HardnessTracker};
use crate::gdqa::metrics::{invalid_gradient_ratio, GroupOutcome, DEFAULT_TOLERANCE};
use crate::gdqa::variants::{make_variants, spread_group};
use crate::grpo::{
    self, completion_logps, gpg_scale, sft_loss, Completion, DynamicSampling, LossConfig,
    LossInputs, Method, Objective, Prompt, RewardScaling, RolloutConfig, Window,
};
use crate::lora::Lora;
use crate::optim::{clip_grad_norm, learning_rate, AdamW, GradAccumulator};
use crate::reward::{rewards, RewardWeights};
use crate::rng::{hash_str, SplitMix64};
use crate::weights::{chain, load_chain, FullWeights};

/// What the optimizer trains.
enum Tuned {
    Lora(Lora),
    Full(FullWeights),
}

impl Tuned {
    fn vars(&self) -> Vec<candle_core::Var> {
        match self {
            Tuned::Lora(l) => l.vars(),
            Tuned::Full(f) => f.vars(),
        }
    }
}

/// One question's group: the variants asked, which variant each rollout answered, the completions
/// and their rewards.
struct Group {
    question: usize,
    variants: Vec<Question>,
    assign: Vec<usize>,
    completions: Vec<Completion>,
    totals: Vec<f32>,
    accuracies: Vec<f32>,
    formats: Vec<f32>,
}

pub struct Trainer {
    cfg: RunConfig,
    run_dir: PathBuf,
    model: Qwen25VL,
    tok: ChatTokenizer,
    params: PreprocessParams,
    questions: Vec<Question>,
    sq: Option<Vec<f32>>,
    tuned: Tuned,
    /// The frozen reference policy (`reference = frozen_copy`); `None` switches adapters off.
    reference: Option<Qwen25VL>,
    opt: AdamW,
    sampler: QuestionSampler,
    tracker: HardnessTracker,
    /// Per image: the policy's detached vision output, or (with `train_vision`) the pixels.
    images: ImageCache,
    /// Per image: the reference model's vision output.
    ref_images: ImageCache,
    stop: Vec<u32>,
    loss_cfg: LossConfig,
    scaling: RewardScaling,
    dynamic: Option<DynamicSampling>,
    history: Vec<StepHistory>,
    step: usize,
}

impl Trainer {
    /// Starts a run in `cfg.output_dir`: writes the resolved `config.toml` and an empty
    /// `metrics.jsonl`.
    pub fn new(cfg: RunConfig) -> Result<Self, RunError> {
        let dir = cfg.output_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| RunError::io(&dir, e))?;
        let cfg_path = dir.join("config.toml");
        std::fs::write(&cfg_path, cfg.to_toml()).map_err(|e| RunError::io(&cfg_path, e))?;
        let metrics = dir.join("metrics.jsonl");
        std::fs::write(&metrics, "").map_err(|e| RunError::io(&metrics, e))?;
        Self::build(cfg, dir)
    }

    /// Continues the run in `run_dir` from its latest checkpoint, with the config it was started
    /// with; the metrics lines after the checkpoint are dropped (they are written again).
    pub fn resume(run_dir: &Path) -> Result<Self, RunError> {
        let cfg = RunConfig::load(&run_dir.join("config.toml"), &[])?;
        let ck_dir = checkpoint::latest(run_dir)?;
        let ck = checkpoint::load(&ck_dir)?;
        let mut t = Self::build_from(cfg, run_dir.to_path_buf(), Some(&ck_dir))?;
        if let Tuned::Lora(lora) = &t.tuned {
            lora.load_tensors(ck.weights.adapter(&ck_dir)?, &ck_dir)?;
        }
        t.opt.load_state(&ck.optimizer)?;
        t.model
            .text()
            .adapters()
            .set_dropout_seed(ck.state.dropout_seed);
        for h in &ck.state.history {
            for &n in &h.draws {
                t.sampler.draw(n);
            }
            for (id, r, a) in &h.groups {
                t.tracker.record(id, r, a);
            }
            t.sampler.record(h.mean_reward);
        }
        t.history = ck.state.history;
        t.step = ck.state.step;
        let metrics = run_dir.join("metrics.jsonl");
        let kept: Vec<String> = std::fs::read_to_string(&metrics)
            .map_err(|e| RunError::io(&metrics, e))?
            .lines()
            .take(t.step)
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&metrics, kept.concat()).map_err(|e| RunError::io(&metrics, e))?;
        Ok(t)
    }

    fn build(cfg: RunConfig, run_dir: PathBuf) -> Result<Self, RunError> {
        Self::build_from(cfg, run_dir, None)
    }

    /// `resume`: a full fine-tuning checkpoint to take the weights from instead of the start.
    fn build_from(
        cfg: RunConfig,
        run_dir: PathBuf,
        resume: Option<&Path>,
    ) -> Result<Self, RunError> {
        let device = match cfg.cuda_ordinal() {
            Ok(Some(n)) => Device::new_cuda(n).map_err(|e| {
                RunError::Config(format!(
                    "device = \"{}\": {e} (a CUDA build is `cargo build --release -p anatomy-cli --features cuda`, which needs the CUDA toolkit)",
                    cfg.device
                ))
            })?,
            _ => Device::Cpu,
        };
        let dtype = match cfg.dtype.as_str() {
            "bf16" => DType::BF16,
            "f16" => DType::F16,
            _ => DType::F32,
        };
        // The starting weights: the base with the `init` chain applied. A LoRA run merges them
        // into the base, so that its new adapters start from there and switching them off gives
        // the warm-started model, not the raw one.
        let (root, loras) = chain(&cfg.base, cfg.init.as_deref())?;
        let (mut model, full) = match cfg.finetune {
            Finetune::Lora => (
                load_chain(&cfg.base, cfg.init.as_deref(), dtype, &device)?,
                None,
            ),
            Finetune::Full => {
                if let Some(first) = loras.first() {
                    return Err(RunError::Config(format!(
                        "full fine-tuning cannot start from the LoRA checkpoint {}: export it with `anatomy export --hf-out <dir>` and use that directory as `base`",
                        first.display()
                    )));
                }
                let weights = match resume {
                    Some(ck) if checkpoint::is_full(ck) => ck.to_path_buf(),
                    _ => root.clone(),
                };
                let support = match cfg.max_pixels {
                    Some(m) => checkpoint::support_with_max_pixels(&root, &run_dir, m)?,
                    None => root.clone(),
                };
                let (m, f) =
                    FullWeights::load(&weights, &support, dtype, &device, cfg.train_vision)?;
                (m, Some(f))
            }
        };
        let reference = match cfg.reference_model() {
            Reference::FrozenCopy if cfg.method.is_rl() => {
                Some(load_chain(&cfg.base, cfg.init.as_deref(), dtype, &device)?)
            }
            _ => None,
        };
        let tok = ChatTokenizer::from_dir(&root)?;
        let mut params = load_preprocess_params(&root)?;
        if let Some(m) = cfg.max_pixels {
            params.max_pixels = m;
            params.min_pixels = params.min_pixels.min(m);
        }
        let opts = data::LoadOptions {
            image_root: cfg.image_root.clone(),
            skip_bad: false,
        };
        let questions = data::load(&cfg.data, &opts)?.questions;
        if !cfg.method.is_rl()
            && (cfg.sft.think.contains("{caption}") || cfg.sft.think.contains("{cell}"))
        {
            // Fail before the model loads, not at the step that first draws such a question.
            for q in &questions {
                caption_of(q)?;
            }
        }
        if questions.is_empty() {
            return Err(RunError::Config(format!(
                "{}: no questions",
                cfg.data.display()
            )));
        }
        let sq = if cfg.ascl.enabled {
            let sim = SimilaritySource::parse(&cfg.ascl.embedder)?.load(Some(&cfg.base))?;
            Some(all_similarities(&questions, sim.as_ref(), Aggregate::Mean)?)
        } else {
            None
        };
        let sampler = match &sq {
            Some(sq) => {
                let stages = split_stages(sq, cfg.ascl.stages)?;
                let cc = CurriculumConfig {
                    pacing: Pacing::Steps(cfg.ascl.stage_steps.max(1)),
                    replay: cfg.ascl.replay,
                    seed: cfg.seed,
                };
                QuestionSampler::Curriculum(Box::new(Curriculum::new(stages, cc)?))
            }
            None => QuestionSampler::epochs(questions.len(), cfg.seed),
        };
        let tuned = match full {
            Some(f) => Tuned::Full(f),
            None => {
                let lora = Lora::attach(&mut model, &cfg.lora, cfg.seed ^ 0x10a)?;
                model.text().adapters().set_training(true);
                Tuned::Lora(lora)
            }
        };
        let opt = AdamW::new(tuned.vars(), &cfg.optim)?;
        let tracker = HardnessTracker::new(HardnessConfig {
            always: cfg.gdqa.always,
            accuracy_below: cfg.gdqa.accuracy_below,
            ..HardnessConfig::default()
        });
        let stop = tok.stop_tokens(&model.config().tokens.eos_token_ids);
        let mut loss_cfg = cfg.method.loss_config(cfg.max_new_tokens);
        let o = &cfg.loss;
        loss_cfg.epsilon_low = o.epsilon_low.unwrap_or(loss_cfg.epsilon_low);
        loss_cfg.epsilon_high = o.epsilon_high.unwrap_or(loss_cfg.epsilon_high);
        loss_cfg.beta = o.beta.unwrap_or(loss_cfg.beta);
        loss_cfg.kl_ratio_correction = o.kl_ratio_correction.unwrap_or(false);
        loss_cfg.aggregation = o.aggregation.unwrap_or(loss_cfg.aggregation);
        let scaling = o.scale_rewards.unwrap_or(cfg.method.reward_scaling());
        let dynamic = cfg.method.dynamic_sampling().then(|| DynamicSampling {
            max_resamples: o.max_resamples.unwrap_or(3),
            tolerance: DEFAULT_TOLERANCE,
        });
        Ok(Trainer {
            cfg,
            run_dir,
            model,
            tok,
            params,
            questions,
            sq,
            tuned,
            reference,
            opt,
            sampler,
            tracker,
            images: ImageCache::new(DEFAULT_BUDGET_BYTES),
            ref_images: ImageCache::new(DEFAULT_BUDGET_BYTES),
            stop,
            loss_cfg,
            scaling,
            dynamic,
            history: Vec::new(),
            step: 0,
        })
    }

    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn step_index(&self) -> usize {
        self.step
    }

    pub fn is_done(&self) -> bool {
        self.step >= self.cfg.steps
    }

    pub fn model(&self) -> &Qwen25VL {
        &self.model
    }

    /// An image's preprocessed pixels as a tensor for `model`.
    fn pixels(&self, path: &Path) -> Result<(Tensor, GridThw), RunError> {
        let img = preprocess_file(path, &self.params)?;
        let pixels = Tensor::from_slice(
            &img.pixel_values,
            (img.n_patches, img.patch_dim),
            self.model.device(),
        )?
        .to_dtype(self.model.dtype())?;
        Ok((pixels, img.grid_thw))
    }

    /// The vision tower's output for an image: computed once per image while the tower is frozen,
    /// on every call (from cached pixels, with its graph) when it trains. `reference` asks the
    /// frozen reference model's tower instead.
    fn image(&mut self, path: &Path, reference: bool) -> Result<(Tensor, GridThw), RunError> {
        let train_vision = !reference && self.cfg.train_vision;
        let cache = match reference {
            true => &self.ref_images,
            false => &self.images,
        };
        if let Some((t, grid)) = cache.get(path) {
            return match train_vision {
                true => Ok((self.model.vision_forward(&t, &[grid])?, grid)),
                false => Ok((t, grid)),
            };
        }
        let (pixels, grid) = self.pixels(path)?;
        let model = match (reference, &self.reference) {
            (true, Some(r)) => r,
            _ => &self.model,
        };
        let embeds = model.vision_forward(&pixels, &[grid])?;
        let (cache, kept) = match (reference, train_vision) {
            (true, _) => (&mut self.ref_images, embeds.detach()),
            (false, true) => (&mut self.images, pixels),
            (false, false) => (&mut self.images, embeds.detach()),
        };
        cache.insert(path, (kept, grid));
        Ok((
            if train_vision {
                embeds
            } else {
                embeds.detach()
            },
            grid,
        ))
    }

    /// The prompt of `q` for the policy, or with `reference` for the frozen reference model.
    fn prompt_for(&mut self, q: &Question, reference: bool) -> Result<Prompt, RunError> {
        let (embeds, grid) = self.image(&q.image, reference)?;
        self.prompt_with(q, &embeds, grid, reference)
    }

    /// The policy's prompts for `qs`, their images through a training vision tower in one forward
    /// (a frozen tower's outputs come from the cache as for one prompt).
    fn prompts(&mut self, qs: &[Question]) -> Result<Vec<Prompt>, RunError> {
        if !self.cfg.train_vision || qs.len() < 2 {
            return qs.iter().map(|q| self.prompt(q)).collect();
        }
        let mut pixels = Vec::with_capacity(qs.len());
        let mut grids = Vec::with_capacity(qs.len());
        for q in qs {
            let (t, grid) = match self.images.get(&q.image) {
                Some(cached) => cached,
                None => {
                    let fresh = self.pixels(&q.image)?;
                    self.images.insert(&q.image, fresh.clone());
                    fresh
                }
            };
            pixels.push(t);
            grids.push(grid);
        }
        let embeds = self
            .model
            .vision_forward(&Tensor::cat(&pixels, 0)?, &grids)?;
        let unit = self.model.config().vision.spatial_merge_size.pow(2);
        let mut start = 0;
        let mut out = Vec::with_capacity(qs.len());
        for (q, grid) in qs.iter().zip(grids) {
            let n = grid[0] * grid[1] * grid[2] / unit;
            out.push(self.prompt_with(q, &embeds.narrow(0, start, n)?, grid, false)?);
            start += n;
        }
        Ok(out)
    }

    /// The prompt of `q` around image embeddings `embeds` of an image of `grid`.
    fn prompt_with(
        &self,
        q: &Question,
        embeds: &Tensor,
        grid: GridThw,
        reference: bool,
    ) -> Result<Prompt, RunError> {
        let merge = self.model.config().vision.spatial_merge_size;
        let text = user_prompt(&prompt::render(q), true);
        let ids = self
            .tok
            .encode_prompt(&text, &[grid[0] * grid[1] * grid[2] / (merge * merge)])?;
        let tracked = !reference && matches!(self.tuned, Tuned::Full(_));
        let model = match (reference, &self.reference) {
            (true, Some(r)) => r,
            _ => &self.model,
        };
        let build = match tracked {
            true => Prompt::with_image_embeds_tracked,
            false => Prompt::with_image_embeds,
        };
        Ok(build(model, &ids, Some(embeds), &[grid])?)
    }

    fn prompt(&mut self, q: &Question) -> Result<Prompt, RunError> {
        self.prompt_for(q, false)
    }

    /// Rolls out one group per question index.
    fn groups(&mut self, indices: &[usize], salt: u64) -> Result<Vec<Group>, RunError> {
        let g = self.cfg.group_size;
        let mut out = Vec::with_capacity(indices.len());
        for (slot, &qi) in indices.iter().enumerate() {
            let q = self.questions[qi].clone();
            let seed = self.cfg.seed
                ^ hash_str(&q.id)
                ^ (self.step as u64).wrapping_mul(0x9E37_79B9)
                ^ (salt << 32)
                ^ slot as u64;
            let k = self.cfg.gdqa.variants.max(1);
            let variants = if self.cfg.gdqa.enabled && k > 1 && self.tracker.is_hard(&q.id) {
                make_variants(&q, k, seed)
            } else {
                vec![q.clone()]
            };
            let assign = spread_group(g, variants.len());
            let mut completions = vec![None; g];
            for (v, variant) in variants.iter().enumerate() {
                let n = assign.iter().filter(|&&a| a == v).count();
                if n == 0 {
                    continue;
                }
                let prompt = self.prompt(variant)?;
                let mut sampler = Sampler::new(SamplingParams {
                    temperature: self.cfg.temperature as f32,
                    top_p: self.cfg.top_p as f32,
                    seed: seed ^ ((v as u64) << 48),
                });
                let rc = RolloutConfig {
                    temperature: self.cfg.temperature as f32,
                    top_p: self.cfg.top_p as f32,
                    max_new_tokens: self.cfg.max_new_tokens,
                    stop: self.stop.clone(),
                };
                let mut samples = grpo::rollout(&self.model, &prompt, n, &rc, &mut sampler)?;
                for (i, a) in assign.iter().enumerate() {
                    if *a == v {
                        completions[i] = samples.pop();
                    }
                }
            }
            let completions: Vec<Completion> = completions.into_iter().flatten().collect();
            let weights = RewardWeights {
                accuracy: self.cfg.reward.accuracy,
                format: self.cfg.reward.format,
            };
            let (mut totals, mut accuracies, mut formats) = (vec![], vec![], vec![]);
            for (c, &a) in completions.iter().zip(&assign) {
                let text = self.tok.decode(c.text_tokens(), false)?;
                let r = rewards(&text, &variants[a], weights);
                totals.push(r.total);
                accuracies.push(r.accuracy);
                formats.push(r.format);
            }
            out.push(Group {
                question: qi,
                variants,
                assign,
                completions,
                totals,
                accuracies,
                formats,
            });
        }
        Ok(out)
    }

    /// Takes one optimizer step and appends its line to `metrics.jsonl`; writes a checkpoint when
    /// one is due.
    pub fn step(&mut self) -> Result<StepRecord, RunError> {
        let record = match self.cfg.method {
            Method::Sft => self.sft_step()?,
            _ => self.rl_step()?,
        };
        let path = self.run_dir.join("metrics.jsonl");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| RunError::io(&path, e))?;
        let line = serde_json::to_string(&record).map_err(|e| RunError::Checkpoint {
            path: path.clone(),
            message: e.to_string(),
        })?;
        writeln!(f, "{line}").map_err(|e| RunError::io(&path, e))?;
        self.step += 1;
        let every = self.cfg.checkpoint_every;
        if self.is_done() || (every > 0 && self.step.is_multiple_of(every)) {
            self.save()?;
        }
        Ok(record)
    }

    /// Writes a checkpoint of the current step.
    pub fn save(&self) -> Result<PathBuf, RunError> {
        checkpoint::save(
            &self.run_dir,
            &Checkpoint {
                weights: match &self.tuned {
                    Tuned::Lora(l) => Weights::Adapter(l.tensors()),
                    Tuned::Full(f) => Weights::Full {
                        tensors: f.tensors(),
                        support: f.support().to_path_buf(),
                    },
                },
                optimizer: self.opt.state()?,
                state: RunState {
                    step: self.step,
                    dropout_seed: self.model.text().adapters().dropout_seed(),
                    lora: self.cfg.lora.clone(),
                    finetune: self.cfg.finetune,
                    history: self.history.clone(),
                },
            },
        )
    }

    fn apply(&mut self, acc: &mut GradAccumulator) -> Result<(f64, f64), RunError> {
        let mut grads = acc.take()?;
        let norm = clip_grad_norm(&mut grads, self.cfg.optim.max_grad_norm)?;
        let lr = learning_rate(&self.cfg.optim, self.step, self.cfg.steps);
        self.opt.step(&grads, lr)?;
        Ok((norm, lr))
    }

    fn rl_step(&mut self) -> Result<StepRecord, RunError> {
        let want = self.cfg.batch_size;
        let mut draws = Vec::new();
        let mut all_outcomes: Vec<(String, Vec<f32>)> = Vec::new();
        let mut drawn: Vec<Group> = Vec::new();
        let groups = match self.dynamic {
            Some(policy) => {
                let filled = policy.fill(
                    want,
                    |round, n| {
                        draws.push(n);
                        let idx = self.sampler.draw(n);
                        self.groups(&idx, round as u64)
                    },
                    |g: &Group| &g.totals,
                )?;
                filled.groups
            }
            None => {
                draws.push(want);
                let idx = self.sampler.draw(want);
                self.groups(&idx, 0)?
            }
        };
        drawn.extend(groups);
        for g in &drawn {
            let q = &self.questions[g.question];
            all_outcomes.push((q.answer_text().to_string(), g.totals.clone()));
        }
        let outcomes: Vec<GroupOutcome> = all_outcomes
            .iter()
            .map(|(c, r)| GroupOutcome {
                class: c,
                rewards: r,
            })
            .collect();
        let invalid = invalid_gradient_ratio(&outcomes, DEFAULT_TOLERANCE);

        let g = self.cfg.group_size;
        let rewards_flat: Vec<f32> = drawn.iter().flat_map(|g| g.totals.clone()).collect();
        let mut adv = grpo::advantages(&rewards_flat, g, self.scaling)?;
        if self.loss_cfg.objective == Objective::PolicyGradient {
            let s = gpg_scale(&rewards_flat, g, DEFAULT_TOLERANCE);
            adv.iter_mut().for_each(|a| *a *= s);
        }
        let tokens: usize = drawn
            .iter()
            .flat_map(|g| g.completions.iter().map(|c| c.tokens.len()))
            .sum();
        let micro: usize = drawn.iter().map(|g| g.variants.len()).sum();
        let window = Window {
            accumulation_steps: micro,
            tokens,
        };
        let mut acc = GradAccumulator::new(self.tuned.vars());
        let (mut loss_sum, mut kl_sum, mut kl_tokens, mut clip_sum) = (0.0, 0.0, 0.0, 0.0);
        for (gi, group) in drawn.iter().enumerate() {
            for (v, variant) in group.variants.iter().enumerate() {
                let members: Vec<usize> = (0..g).filter(|&i| group.assign[i] == v).collect();
                if members.is_empty() {
                    continue;
                }
                let prompt = self.prompt(variant)?;
                let seqs: Vec<&[u32]> = members
                    .iter()
                    .map(|&i| group.completions[i].tokens.as_slice())
                    .collect();
                let a: Vec<f32> = members.iter().map(|&i| adv[gi * g + i]).collect();
                let a = Tensor::new(a, self.model.device())?;
                let reference = if self.loss_cfg.beta == 0.0 {
                    None
                } else if self.reference.is_some() {
                    let rp = self.prompt_for(variant, true)?;
                    let model = self.reference.as_ref().unwrap_or(&self.model);
                    let r = completion_logps(model, &rp, &seqs, self.cfg.temperature)?;
                    Some(r.0.detach())
                } else {
                    let adapters = self.model.text().adapters();
                    adapters.set_enabled(false);
                    let r = completion_logps(&self.model, &prompt, &seqs, self.cfg.temperature);
                    adapters.set_enabled(true);
                    Some(r?.0.detach())
                };
                let (logps, mask) =
                    completion_logps(&self.model, &prompt, &seqs, self.cfg.temperature)?;
                let out = grpo::loss(
                    &self.loss_cfg,
                    &LossInputs {
                        logps: &logps,
                        old_logps: None,
                        ref_logps: reference.as_ref(),
                        advantages: &a,
                        mask: &mask,
                    },
                    window,
                )?;
                let n_tok: f64 = seqs.iter().map(|s| s.len() as f64).sum();
                loss_sum += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                if let Some(kl) = out.kl {
                    kl_sum += kl * n_tok;
                    kl_tokens += n_tok;
                }
                clip_sum += out.clip_ratio * n_tok;
                acc.add(&out.loss.backward()?)?;
            }
        }
        let (grad_norm, lr) = self.apply(&mut acc)?;

        let n = rewards_flat.len().max(1) as f32;
        let mean = |v: &dyn Fn(&Group) -> &Vec<f32>| {
            drawn.iter().flat_map(|g| v(g).iter()).sum::<f32>() / n
        };
        let reward = mean(&|g| &g.totals);
        let batch: Vec<usize> = drawn.iter().map(|g| g.question).collect();
        let record = StepRecord {
            step: self.step,
            reward,
            accuracy: mean(&|g| &g.accuracies),
            format_reward: mean(&|g| &g.formats),
            sq: self
                .sq
                .as_ref()
                .and_then(|sq| crate::ascl::curriculum::mean_sq(&batch, sq)),
            invalid_ratio: invalid.ratio,
            invalid_per_class: invalid
                .per_class
                .iter()
                .map(|(k, v)| (k.clone(), v.ratio))
                .collect::<BTreeMap<_, _>>(),
            kl: (kl_tokens > 0.0).then(|| kl_sum / kl_tokens),
            loss: loss_sum,
            completion_len: tokens as f32 / n,
            lr,
            stage: self.sampler.stage(),
            grad_norm,
            clip_ratio: clip_sum / tokens.max(1) as f64,
        };
        let mut groups_log = Vec::new();
        for grp in &drawn {
            let id = self.questions[grp.question].id.clone();
            self.tracker.record(&id, &grp.totals, &grp.accuracies);
            groups_log.push((id, grp.totals.clone(), grp.accuracies.clone()));
        }
        self.sampler.record(reward);
        self.history.push(StepHistory {
            draws,
            mean_reward: reward,
            groups: groups_log,
        });
        Ok(record)
    }

    /// The SFT target: the think block, then the answer letter (correct or, for a format-only warm
    /// start, drawn at random), then the end-of-turn token.
    fn sft_target(&self, q: &Question, rng: &mut SplitMix64) -> Result<Vec<u32>, RunError> {
        let answer = match self.cfg.sft.answer {
            SftAnswer::Correct => q.answer,
            SftAnswer::Random => rng.below(q.options.len()),
        };
        let text = sft_text(&self.cfg.sft.think, q, answer)?;
        let mut ids = self.tok.encode(&text)?;
        ids.push(self.tok.im_end_id);
        Ok(ids)
    }

    fn sft_step(&mut self) -> Result<StepRecord, RunError> {
        let n = self.cfg.batch_size;
        let idx = self.sampler.draw(n);
        let mut rng = SplitMix64::new(self.cfg.seed ^ (self.step as u64).wrapping_mul(0x51_7cc1));
        let mut acc = GradAccumulator::new(self.tuned.vars());
        let (mut acc_r, mut fmt_r, mut total_r, mut len) = (0.0, 0.0, 0.0, 0usize);
        let weights = RewardWeights {
            accuracy: self.cfg.reward.accuracy,
            format: self.cfg.reward.format,
        };
        let measured = match self.cfg.sft.greedy_samples {
            0 => n,
            k => k.min(n),
        };
        let qs: Vec<Question> = idx.iter().map(|&qi| self.questions[qi].clone()).collect();
        let targets = qs
            .iter()
            .map(|q| self.sft_target(q, &mut rng))
            .collect::<Result<Vec<_>, _>>()?;
        let micro = match self.cfg.sft.micro_batch {
            0 => n.max(1),
            m => m,
        };
        let rc = RolloutConfig {
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: self.cfg.max_new_tokens,
            stop: self.stop.clone(),
        };
        let mut loss_sum = 0.0;
        for (chunk, (qs, targets)) in qs.chunks(micro).zip(targets.chunks(micro)).enumerate() {
            let prompts = self.prompts(qs)?;
            // sft_loss averages over its examples; weighting by the chunk's share makes the
            // chunks add up to the mean over the whole batch.
            let loss = (sft_loss(
                &self.model,
                &prompts.iter().collect::<Vec<_>>(),
                &targets.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            )? * (qs.len() as f64 / n as f64))?;
            loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            acc.add(&loss.backward()?)?;
            // What the model answers now, greedily, for the reward and accuracy columns.
            let take = measured.saturating_sub(chunk * micro);
            for (q, prompt) in qs.iter().zip(&prompts).take(take) {
                let mut greedy = Sampler::new(SamplingParams::default());
                let c = grpo::rollout(&self.model, prompt, 1, &rc, &mut greedy)?.remove(0);
                let text = self.tok.decode(c.text_tokens(), false)?;
                let r = rewards(&text, q, weights);
                acc_r += r.accuracy;
                fmt_r += r.format;
                total_r += r.total;
                len += c.tokens.len();
            }
        }
        let (grad_norm, lr) = self.apply(&mut acc)?;
        let k = measured as f32;
        let batch = idx.clone();
        self.sampler.record(total_r / k);
        self.history.push(StepHistory {
            draws: vec![n],
            mean_reward: total_r / k,
            groups: Vec::new(),
        });
        Ok(StepRecord {
            step: self.step,
            reward: total_r / k,
            accuracy: acc_r / k,
            format_reward: fmt_r / k,
            sq: self
                .sq
                .as_ref()
                .and_then(|sq| crate::ascl::curriculum::mean_sq(&batch, sq)),
            invalid_ratio: 0.0,
            invalid_per_class: BTreeMap::new(),
            kl: None,
            loss: loss_sum,
            completion_len: len as f32 / k,
            lr,
            stage: self.sampler.stage(),
            grad_norm,
            clip_ratio: 0.0,
        })
    }
}
