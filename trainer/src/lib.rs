//! anatomy-trainer: GRPO fine-tuning of Qwen2.5-VL with ASCL and GDQA.
//!
//! The data loaders, rewards, curriculum, augmentation and the GRPO engine arrive with their issues;
//! they build on the candle model in `anatomy_models::qwen2_5_vl::candle`. Intentionally empty for now.
