//! The subcommands of `anatomy`, one module each.

pub mod ask;
pub mod ask_gguf;
pub mod augment;
pub mod bench;
pub mod convert;
pub mod curriculum;
pub mod eval;
pub mod export;
pub mod init_base;
pub mod inspect;
pub mod plot;
pub mod random_gguf;
pub mod synth;
pub mod tokenize;
pub mod train;
